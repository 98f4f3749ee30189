"""
Tests of the submission service (RFC 6409) through the SMTP server: AUTH
before MAIL, the envelope sender an authenticated user may use, relaying,
and the C{Message-ID:} and C{Date:} added to a message that lacks them.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import Mailbox
from mailappliance.interfaces import AliasLoop, Resolved, TemporaryResolutionError
from mailappliance.smtp.policy import SMTPSettings
from mailappliance.testing import FakeChecker, SMTPHarness, TLSCapableTransport
from tests.test_smtp_server import HOST, RCPT_OK, SENDER_OK, START, lines

SUBMISSION = SMTPSettings(hostname=HOST, service="submission")
ALICE = Mailbox("alice", "example.test")
BOB = Mailbox("bob", "example.test")
TEAM = Mailbox("team", "example.test")
NOT_OWNED = "553 5.7.1 Sender address not owned by user"
QUEUED = "250 2.0.0 Ok: queued as Q1"
# 2023-11-14 22:13:20 UTC
NOW = 1700000000
MESSAGE_ID = b"Message-ID: <Q1@mx.example.test>\r\n"
DATE = b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
RECEIVED_END = b"; Tue, 14 Nov 2023 22:13:20 +0000\r\n"


def logged_in(user: bytes = b"alice@example.test", untrusted: bool = False) -> SMTPHarness:
    """
    A submission session logged in as C{user}: from a trusted address, or
    from an untrusted one after STARTTLS.
    """
    checker = FakeChecker({"alice@example.test": b"pw", "bob@example.test": b"pw"})
    if untrusted:
        session = SMTPHarness(settings=SUBMISSION, peer="192.0.2.1", checker=checker, connect=False, tls=object(),
                              transport_class=TLSCapableTransport)
    else:
        session = SMTPHarness(settings=SUBMISSION, peer="127.0.0.1", checker=checker, connect=False)
    session.clock.advance(NOW)
    session.connect()
    if untrusted:
        assert session.send(b"EHLO client.test\r\nSTARTTLS\r\n").endswith(b"220 2.0.0 Ready to start TLS\r\n")
    response = base64.b64encode(b"\0" + user + b"\0pw")
    assert session.send(b"EHLO client.test\r\nAUTH PLAIN " + response + b"\r\n").endswith(
        b"235 2.7.0 Authentication successful\r\n"
    )
    return session


class AuthRequiredTests(SynchronousTestCase):
    def test_mail_before_auth(self) -> None:
        """
        MAIL before AUTH is 530 5.7.0 and opens no transaction.
        """
        session = SMTPHarness(settings=SUBMISSION, peer="127.0.0.1", checker=FakeChecker())
        session.send(b"EHLO client.test\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"),
                         lines("530 5.7.0 Authentication required", "503 5.5.1 Error: need MAIL command"))


    def test_starttls_first(self) -> None:
        """
        From an untrusted address before STARTTLS, where AUTH is not
        offered yet, the 530 says to start TLS first.
        """
        session = SMTPHarness(settings=SUBMISSION, peer="192.0.2.1", checker=FakeChecker(), tls=object(),
                              transport_class=TLSCapableTransport)
        session.send(b"EHLO client.test\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<alice@example.test>\r\n"),
                         lines("530 5.7.0 Must issue a STARTTLS command first"))

    def test_no_tls_configured(self) -> None:
        """
        Without TLS to offer, the 530 just asks for authentication.
        """
        session = SMTPHarness(settings=SUBMISSION, peer="192.0.2.1", checker=FakeChecker())
        session.send(b"EHLO client.test\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<alice@example.test>\r\n"),
                         lines("530 5.7.0 Authentication required"))


class SenderOwnershipTests(SynchronousTestCase):
    def mail(self, session: SMTPHarness, sender: str) -> bytes:
        return session.send(f"MAIL FROM:<{sender}>\r\n".encode())

    def test_own_address(self) -> None:
        """
        The user's own address, in any case, without a lookup.
        """
        session = logged_in()
        self.assertEqual(self.mail(session, "alice@example.test"), lines(SENDER_OK))
        session.send(b"RSET\r\n")
        self.assertEqual(self.mail(session, "ALICE@Example.TEST"), lines(SENDER_OK))
        self.assertEqual(session.resolver.asked, [])

    def test_alias_pointing_at_user(self) -> None:
        """
        An address whose resolution includes the user's account (an alias
        for several people, a sub-address) is theirs; it is looked up.
        """
        session = logged_in()
        session.resolver.table[TEAM.key] = Resolved(TEAM, local=(BOB, ALICE), remote=(Mailbox("c", "else.test"),))
        session.resolver.table["alice+lists@example.test"] = Resolved(Mailbox("alice+lists", "example.test"),
                                                                     local=(ALICE,))
        self.assertEqual(self.mail(session, "Team@example.test"), lines(SENDER_OK))
        session.send(b"RSET\r\n")
        self.assertEqual(self.mail(session, "alice+lists@example.test"), lines(SENDER_OK))
        self.assertEqual(session.resolver.asked, ["team@example.test", "alice+lists@example.test"])

    def test_someone_elses_address(self) -> None:
        """
        Another user's address, an alias that does not include the user,
        an unknown local address, a remote address, or an alias loop:
        553 5.7.1, and no transaction.
        """
        session = logged_in()
        session.resolver.table["others@example.test"] = Resolved(Mailbox("others", "example.test"), local=(BOB,))
        session.resolver.table["loop@example.test"] = AliasLoop("loop")
        for sender in ("bob@example.test", "others@example.test", "nobody@example.test", "alice@elsewhere.test",
                       "loop@example.test"):
            self.assertEqual(self.mail(session, sender), lines(NOT_OWNED), sender)
        self.assertEqual(session.send(b"RCPT TO:<bob@example.test>\r\n"), lines("503 5.5.1 Error: need MAIL command"))
        self.assertIn(
            "service=submission event=reject peer=127.0.0.1 session=s1 cmd=MAIL from=<bob@example.test> code=553 "
            'status=5.7.1 reason="Sender address not owned by user"',
            session.log_lines(),
        )

    def test_null_sender(self) -> None:
        """
        The null sender is refused to an authenticated user (553 5.7.1):
        bounces are the server's to send.
        """
        session = logged_in()
        self.assertEqual(self.mail(session, ""), lines(NOT_OWNED))

    def test_lookup_fails(self) -> None:
        """
        A temporary lookup failure is 451 4.3.0, so the client tries
        again later; so is an unexpected error (logged).
        """
        session = logged_in()
        session.resolver.table[TEAM.key] = TemporaryResolutionError("database down")
        session.resolver.table["odd@example.test"] = RuntimeError("bug")
        failed = lines("451 4.3.0 Error: temporary sender lookup failure")
        self.assertEqual(self.mail(session, "team@example.test"), failed)
        self.assertEqual(self.mail(session, "odd@example.test"), failed)
        self.assertTrue(any(event.get("log_failure") is not None for event in session.events))

    def test_pipelined_with_slow_lookup(self) -> None:
        """
        MAIL, RCPT and DATA pipelined behind a slow ownership lookup are
        answered in order once it answers.
        """
        session = logged_in()
        session.resolver.hold = True
        session.resolver.table[TEAM.key] = Resolved(TEAM, local=(ALICE,))
        self.assertEqual(session.send(b"MAIL FROM:<team@example.test>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n"), b"")
        session.resolver.answer(0)
        self.assertEqual(session.output(), lines(SENDER_OK, RCPT_OK, START))

    def test_mta_service_unaffected(self) -> None:
        """
        The MTA service accepts any sender, the null one included.
        """
        session = SMTPHarness()
        session.send(b"EHLO client.test\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<>\r\nRSET\r\nMAIL FROM:<bob@example.test>\r\n"),
                         lines(SENDER_OK, "250 2.0.0 Ok", SENDER_OK))


class RelayTests(SynchronousTestCase):
    def test_authenticated_user_relays(self) -> None:
        """
        An authenticated user, even from an untrusted address over TLS,
        may send to any domain; the message is received C{with ESMTPSA}
        and the queued event names the user.
        """
        session = logged_in(untrusted=True)
        self.assertFalse(session.protocol.policy.trusted)
        self.assertEqual(
            session.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<carol@elsewhere.test>\r\nDATA\r\n"
                         b"Date: x\r\nMessage-ID: <m@x>\r\n\r\nhi\r\n.\r\n"),
            lines(SENDER_OK, RCPT_OK, START, QUEUED),
        )
        envelope = session.spool.writers[0].envelope
        self.assertEqual([(r.target, r.local) for r in envelope.recipients],
                         [(Mailbox("carol", "elsewhere.test"), False)])
        self.assertIn(b" with ESMTPSA id Q1", bytes(session.spool.writers[0].data))
        self.assertIn("user=alice@example.test", next(line for line in session.log_lines() if "event=queued" in line))


class MissingHeaderTests(SynchronousTestCase):
    def submit(self, body: bytes, session: SMTPHarness | None = None) -> bytes:
        """
        Submit C{body} (the data, dot-stuffed, before the final dot line)
        and return what was spooled after our Received: header.
        """
        session = session or logged_in()
        self.assertEqual(
            session.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n", body,
                         b".\r\n"),
            lines(SENDER_OK, RCPT_OK, START, QUEUED),
        )
        data = bytes(session.spool.writers[0].data)
        return data[data.index(RECEIVED_END) + len(RECEIVED_END):]

    def test_added_when_missing(self) -> None:
        """
        A message without the fields gets both, at the end of its header
        section, with the queue id and the submission time.
        """
        self.assertEqual(self.submit(b"Subject: hi\r\n\r\n..body\r\n"),
                         b"Subject: hi\r\n" + MESSAGE_ID + DATE + b"\r\n.body\r\n")

    def test_present(self) -> None:
        """
        Fields present, in any case, are kept and not added again.
        """
        body = b"date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMESSAGE-ID: <own@x>\r\n\r\nbody\r\n"
        self.assertEqual(self.submit(body), body)

    def test_x_date_does_not_count(self) -> None:
        """
        C{X-Date:} is not C{Date:}.
        """
        self.assertEqual(self.submit(b"X-Date: 1\r\nMessage-ID: <own@x>\r\n\r\nb\r\n"),
                         b"X-Date: 1\r\nMessage-ID: <own@x>\r\n" + DATE + b"\r\nb\r\n")

    def test_no_header_section(self) -> None:
        """
        A message with no header section gets the fields and an empty
        line in front; an empty message gets just the fields.
        """
        self.assertEqual(self.submit(b"hello\r\n"), MESSAGE_ID + DATE + b"\r\nhello\r\n")
        self.assertEqual(self.submit(b""), MESSAGE_ID + DATE)

    def test_every_chunk_boundary(self) -> None:
        """
        The same result whichever offset the client's data is cut at,
        through the DATA reader and the completer.
        """
        data = b"From: a@example.test\r\nSubject: s\r\n\r\n..x\r\nDate: body\r\n.\r\n"
        expected = b"From: a@example.test\r\nSubject: s\r\n" + MESSAGE_ID + DATE + b"\r\n.x\r\nDate: body\r\n"
        for cut in range(len(data) + 1):
            session = logged_in()
            session.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
            self.assertEqual(session.send(data[:cut], data[cut:]), lines(QUEUED), cut)
            spooled = bytes(session.spool.writers[0].data)
            self.assertEqual(spooled[spooled.index(RECEIVED_END) + len(RECEIVED_END):], expected, cut)

    def test_refused_message_not_completed(self) -> None:
        """
        A message refused for a bare LF is not written further.
        """
        session = logged_in()
        self.assertEqual(
            session.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
                         b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n"),
            lines(SENDER_OK, RCPT_OK, START,
                  "550 5.6.0 Error: message contains bare CR or LF (line ends must be CRLF); not accepted"),
        )
        self.assertEqual(session.spool.writers[0].state, "aborted")

    def test_mta_service_never_adds(self) -> None:
        """
        The inbound service stores the message as it came.
        """
        session = SMTPHarness(peer="127.0.0.1")
        session.send(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        self.assertEqual(session.send(b"Subject: s\r\n\r\nb\r\n.\r\n"), lines(QUEUED))
        self.assertTrue(bytes(session.spool.writers[0].data).endswith(b"\r\nSubject: s\r\n\r\nb\r\n"))
        self.assertNotIn(b"Message-ID", bytes(session.spool.writers[0].data))
