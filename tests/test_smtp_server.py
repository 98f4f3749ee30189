"""
Tests for L{mailappliance.smtp.server}: the commands, replies and message
acceptance of a session, mostly written as dialogue tables.

Pipelining, flow control, limits and robustness are in
L{tests.test_smtp_server_flow}.
"""

from __future__ import annotations

import errno

from twisted.internet.interfaces import ISSLTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from mailappliance.address import Mailbox
from mailappliance.interfaces import AliasLoop, Resolved, TemporaryResolutionError
from mailappliance.queue.envelope import Envelope, Recipient
from mailappliance.smtp.policy import SMTPSettings
from mailappliance.testing import SMTPHarness

HOST = "mx.example.test"
ALICE = Mailbox("alice", "example.test")
BOB = Mailbox("bob", "example.test")
SENDER = Mailbox("sender", "elsewhere.test")


def lines(*texts: str) -> bytes:
    """
    Replies as sent: each text followed by CRLF.
    """
    return "".join(text + "\r\n" for text in texts).encode("utf-8")


GREETING = lines(f"220 2.0.0 {HOST} ESMTP mailappliance")
EHLO = (
    f"250-{HOST} Hello client.test [192.0.2.1]",
    "250-PIPELINING",
    "250-SIZE 26214400",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250-SMTPUTF8",
    "250 CHUNKING",
)
OK = "250 2.0.0 Ok"
SENDER_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
START = "354 2.0.0 End data with <CR><LF>.<CR><LF>"
BYE = f"221 2.0.0 {HOST} Bye"
NEED_HELO = "503 5.5.1 Error: send HELO/EHLO first"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
UNKNOWN_USER = "550 5.1.1 Error: no such user here"
RELAY_DENIED = "554 5.7.1 Relay access denied"

# A Received: header's date with the test clock at 0.
DATE = "Thu, 01 Jan 1970 00:00:00 +0000"


class DialogueTestCase(SynchronousTestCase):
    def converse(self, table: list[tuple[bytes | str, tuple[str, ...]]], **harness: object) -> SMTPHarness:
        """
        Run a dialogue: each C{send} (a command; CRLF is added to text)
        must get exactly the replies in C{expect}.
        """
        session = SMTPHarness(**harness)  # type: ignore[arg-type]
        for send, expect in table:
            data = send.encode("utf-8") + b"\r\n" if isinstance(send, str) else send
            self.assertEqual(session.send(data), lines(*expect), send)
        return session


class GreetingTests(DialogueTestCase):
    def test_greeting_and_nodelay(self) -> None:
        """
        The server greets with 220 and its host name, and turns Nagle off.
        """
        session = SMTPHarness(connect=False)
        self.assertEqual(session.connect(), GREETING)
        self.assertTrue(session.transport.no_delay)

    def test_ehlo(self) -> None:
        """
        EHLO lists the extensions; verbs are case-insensitive.
        """
        self.converse([("EHLO client.test", EHLO), ("ehlo client.test", EHLO)])

    def test_ehlo_ipv6(self) -> None:
        """
        The EHLO greeting names an IPv6 peer as an address literal.
        """
        session = SMTPHarness(peer="2001:db8::7")
        self.assertEqual(session.send(b"EHLO c\r\n").split(b"\r\n")[0], b"250-mx.example.test Hello c [IPv6:2001:db8::7]")

    def test_helo(self) -> None:
        """
        HELO gets a one-line reply.
        """
        self.converse([("HELO client.test", (f"250 2.0.0 {HOST}",))])

    def test_greeting_syntax(self) -> None:
        """
        EHLO and HELO need one printable ASCII word.
        """
        self.converse(
            [
                ("EHLO", ("501 5.5.4 Syntax: EHLO hostname",)),
                ("HELO", ("501 5.5.4 Syntax: HELO hostname",)),
                ("EHLO a b", ("501 5.5.4 Syntax: EHLO hostname",)),
                (b"EHLO \xc3\xa9\r\n", ("501 5.5.4 Syntax: EHLO hostname",)),
                ("MAIL FROM:<>", (NEED_HELO,)),
            ]
        )


class CommandTests(DialogueTestCase):
    def test_simple_commands(self) -> None:
        """
        NOOP, RSET, VRFY, EXPN, HELP and QUIT.
        """
        session = self.converse(
            [
                ("NOOP", (OK,)),
                ("NOOP anything", (OK,)),
                ("RSET", (OK,)),
                ("RSET x", ("501 5.5.4 Syntax error: no arguments allowed",)),
                ("VRFY alice", ("252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery",)),
                ("VRFY", ("501 5.5.4 Syntax: VRFY address",)),
                ("EXPN team", ("502 5.5.1 EXPN is not available",)),
                ("HELP", ("214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
                          "214 2.0.0 See RFC 5321")),
                ("QUIT now", ("501 5.5.4 Syntax error: no arguments allowed",)),
                ("QUIT", (BYE,)),
            ]
        )
        self.assertTrue(session.closed)
        self.assertEqual(session.send(b"NOOP\r\n"), b"")

    def test_unknown_and_unimplemented(self) -> None:
        """
        Unknown verbs are 500, known extensions not offered are 502
        (STARTTLS without a certificate), AUTH on the MTA service is 503,
        an empty line or a bare CR inside a command is 500, and so is a
        line ended by a bare LF (dropped up to the LF: what follows it is
        the next command).
        """
        self.converse(
            [
                ("FOO", ("500 5.5.2 Error: command not recognized",)),
                ("", ("500 5.5.2 Error: command not recognized",)),
                ("STARTTLS", ("502 5.5.1 Error: command not implemented",)),
                ("AUTH PLAIN", ("503 5.5.1 Error: authentication not enabled",)),
                ("TURN", ("502 5.5.1 Error: command not implemented",)),
                ("ETRN example.test", ("502 5.5.1 Error: command not implemented",)),
                (b"NOOP\nRSET\r\n", ("500 5.5.2 Error: bare <LF> received", OK)),
                (b"NOOP\rx\r\n", ("500 5.5.2 Error: bare CR or LF in command",)),
            ]
        )

    def test_sequence_errors(self) -> None:
        """
        503 for MAIL before EHLO, RCPT before MAIL, DATA before MAIL or
        RCPT, and a second MAIL.
        """
        self.converse(
            [
                ("MAIL FROM:<a@b.test>", (NEED_HELO,)),
                ("RCPT TO:<alice@example.test>", (NEED_MAIL,)),
                ("DATA", (NEED_MAIL,)),
                ("EHLO client.test", EHLO),
                ("RCPT TO:<alice@example.test>", (NEED_MAIL,)),
                ("DATA", (NEED_MAIL,)),
                ("MAIL FROM:<a@b.test>", (SENDER_OK,)),
                ("MAIL FROM:<a@b.test>", ("503 5.5.1 Error: nested MAIL command",)),
                ("DATA", (NEED_RCPT,)),
                ("DATA now", ("501 5.5.4 Syntax error: no arguments allowed",)),
            ]
        )

    def test_rset_and_ehlo_reset(self) -> None:
        """
        RSET, EHLO and HELO end the transaction.
        """
        self.converse(
            [
                ("EHLO client.test", EHLO),
                ("MAIL FROM:<a@b.test>", (SENDER_OK,)),
                ("RSET", (OK,)),
                ("RCPT TO:<alice@example.test>", (NEED_MAIL,)),
                ("MAIL FROM:<a@b.test>", (SENDER_OK,)),
                ("EHLO client.test", EHLO),
                ("RCPT TO:<alice@example.test>", (NEED_MAIL,)),
                ("MAIL FROM:<a@b.test>", (SENDER_OK,)),
                ("HELO client.test", (f"250 2.0.0 {HOST}",)),
                ("RCPT TO:<alice@example.test>", (NEED_MAIL,)),
            ]
        )


class MailTests(DialogueTestCase):
    def test_size_that_cannot_fit(self) -> None:
        """
        A SIZE that the data folder's free space cannot take (one and a
        half times it) gets 452 4.3.1 at MAIL (RFC 1870 section 6.1).
        """
        session = SMTPHarness()

        class Space:
            def too_little_for(self, size):
                return size > 100

        session.factory.space = Space()
        session.send(b"EHLO client.test\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<a@b.test> SIZE=101\r\n"),
                         lines("452 4.3.1 Error: insufficient system storage"))
        self.assertEqual(session.send(b"MAIL FROM:<a@b.test> SIZE=100\r\n"), lines("250 2.1.0 Ok"))

    def test_parameters(self) -> None:
        """
        MAIL parameters: SIZE against the limit, BODY, SMTPUTF8, unknown
        and duplicate parameters, the null sender and source routes.
        """
        self.converse(
            [
                ("EHLO client.test", EHLO[:2] + ("250-SIZE 1000",) + EHLO[3:]),
                ("MAIL FROM:<a@b.test> SIZE=1001", ("552 5.3.4 Error: message size exceeds fixed limit",)),
                ("MAIL FROM:<a@b.test> BODY=BINARYMIME", ("504 5.5.4 Error: BODY=BINARYMIME is not supported",)),
                ("MAIL FROM:<a@b.test> ENVID=x", ("555 5.5.4 Error: unsupported parameter ENVID",)),
                ("MAIL FROM:<a@b.test> BODY=7BIT BODY=7BIT", ("501 5.5.4 Error: duplicate parameter BODY",)),
                ("MAIL FROM:a@b.test>", ("501 5.5.4 Syntax: MAIL FROM:<address>",)),
                ("MAIL FROM:<a@@b.test>", ("501 5.1.7 Bad sender address syntax: invalid local part",)),
                ("MAIL FROM:<ü@b.test>", ("553 5.6.7 Error: non-ASCII sender address requires SMTPUTF8",)),
                ("MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME", (SENDER_OK,)),
                ("RSET", (OK,)),
                ("MAIL FROM:<>", (SENDER_OK,)),
                ("RSET", (OK,)),
                ("MAIL FROM:<@relay.test:a@b.test>", (SENDER_OK,)),
                ("RSET", (OK,)),
                ("MAIL FROM:<ü@b.test> SMTPUTF8", (SENDER_OK,)),
                ("RCPT TO:<ü@elsewhere.test>", (RELAY_DENIED,)),
            ],
            settings=SMTPSettings(hostname=HOST, max_message_size=1000),
        )

    def test_parameters_after_helo(self) -> None:
        """
        After HELO, MAIL parameters are refused with 555.
        """
        self.converse(
            [
                ("HELO client.test", (f"250 2.0.0 {HOST}",)),
                ("MAIL FROM:<a@b.test> SIZE=10", ("555 5.5.4 Error: parameters need EHLO",)),
                ("MAIL FROM:<a@b.test>", (SENDER_OK,)),
            ]
        )

    def test_submission_requires_auth(self) -> None:
        """
        On the submission service MAIL needs AUTH first, even from a
        trusted network.
        """
        self.converse(
            [
                ("EHLO client.test", (f"250-{HOST} Hello client.test [127.0.0.1]",) + EHLO[1:]),
                ("MAIL FROM:<a@b.test>", ("530 5.7.0 Authentication required",)),
            ],
            settings=SMTPSettings(hostname=HOST, service="submission"),
            peer="127.0.0.1",
        )


class RcptTests(DialogueTestCase):
    def open_transaction(self, peer: str = "192.0.2.1") -> SMTPHarness:
        session = SMTPHarness(peer=peer)
        session.send(b"EHLO client.test\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<sender@elsewhere.test>\r\n"), lines(SENDER_OK))
        return session

    def test_local_and_unknown(self) -> None:
        """
        An unknown local recipient is 550 5.1.1 and does not affect the
        others of the transaction.
        """
        session = self.open_transaction()
        self.assertEqual(
            session.send(b"RCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<Bob@Example.Test>\r\n"),
            lines(RCPT_OK, UNKNOWN_USER, RCPT_OK),
        )
        self.assertEqual(session.resolver.asked, ["alice@example.test", "nobody@example.test", "bob@example.test"])

    def test_relay_denied(self) -> None:
        """
        A recipient in a domain that is not local is refused with 554
        5.7.1 from an untrusted client, without asking the resolver.
        """
        session = self.open_transaction()
        self.assertEqual(session.send(b"RCPT TO:<carol@elsewhere.test>\r\n"), lines(RELAY_DENIED))
        self.assertEqual(session.resolver.asked, [])

    def test_relay_from_trusted(self) -> None:
        """
        A trusted client may relay; the recipient is a remote target.
        """
        session = self.open_transaction(peer="127.0.0.1")
        self.assertEqual(session.send(b"RCPT TO:<carol@elsewhere.test>\r\n"), lines(RCPT_OK))
        self.assertEqual(session.protocol._transaction.envelope_recipients(),
                         (Recipient(Mailbox("carol", "elsewhere.test"), Mailbox("carol", "elsewhere.test"), local=False),))

    def test_alias_to_remote_accepted(self) -> None:
        """
        A local alias that expands to remote targets is accepted from any
        client; unknown members become failed recipients.
        """
        session = self.open_transaction()
        team = Mailbox("team", "example.test")
        carol = Mailbox("carol", "elsewhere.test")
        ghost = Mailbox("ghost", "example.test")
        session.resolver.table["team@example.test"] = Resolved(team, local=(ALICE,), remote=(carol,), unknown=(ghost,))
        self.assertEqual(session.send(b"RCPT TO:<team@example.test>\r\nRCPT TO:<alice@example.test>\r\n"),
                         lines(RCPT_OK, RCPT_OK))
        self.assertEqual(
            session.protocol._transaction.envelope_recipients(),
            (
                Recipient(team, ALICE, local=True),
                Recipient(team, carol, local=False),
                Recipient(team, ghost, local=True, state="failed", status="5.1.1",
                          last_error="5.1.1 unknown alias member"),
            ),
        )

    def test_resolution_errors(self) -> None:
        """
        A resolver's L{ResolutionError} gives its own code, status and
        reason; an unexpected failure is 451 4.3.0 and is logged.
        """
        session = self.open_transaction()
        session.resolver.table["loop@example.test"] = AliasLoop("alias loop: loop -> loop")
        session.resolver.table["later@example.test"] = TemporaryResolutionError("directory down")
        session.resolver.table["bug@example.test"] = ZeroDivisionError()
        self.assertEqual(
            session.send(b"RCPT TO:<loop@example.test>\r\nRCPT TO:<later@example.test>\r\nRCPT TO:<bug@example.test>\r\n"),
            lines(
                "550 5.4.6 Error: alias loop: loop -> loop",
                "451 4.3.0 Error: directory down",
                "451 4.3.0 Error: temporary recipient lookup failure",
            ),
        )
        failures = [e for e in session.events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0]["log_failure"].value, ZeroDivisionError)

    def test_postmaster(self) -> None:
        """
        Without a configured postmaster, C{<Postmaster>} is looked up as
        postmaster at our host name.
        """
        session = self.open_transaction()
        session.resolver.local_domains.add(HOST)
        session.send(b"RCPT TO:<Postmaster>\r\n")
        self.assertEqual(session.resolver.asked, [f"postmaster@{HOST}"])

    def test_configured_postmaster(self) -> None:
        """
        C{<Postmaster>} reaches the configured postmaster, looked up in its
        local domain, even when the host name is not a local domain (it
        used to become a relay to postmaster@hostname).
        """
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, postmaster=Mailbox("alice", "example.test")))
        session.send(b"EHLO client.test\r\nMAIL FROM:<sender@elsewhere.test>\r\n")
        self.assertEqual(session.send(b"RCPT TO:<postmaster>\r\n"), lines(RCPT_OK))
        self.assertEqual(session.resolver.asked, ["alice@example.test"])

    def test_postmaster_of_every_local_domain(self) -> None:
        """
        C{postmaster@} a local domain without an account or alias of that
        name reaches the configured postmaster (RFC 5321 section 4.5.1);
        one that resolves is left as it is; other unknown addresses are
        still 550 5.1.1.
        """
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, postmaster=Mailbox("alice", "example.test")))
        session.send(b"EHLO client.test\r\nMAIL FROM:<sender@elsewhere.test>\r\n")
        self.assertEqual(session.send(b"RCPT TO:<PostMaster@example.test>\r\n"), lines(RCPT_OK))
        self.assertEqual(session.resolver.asked, ["postmaster@example.test", "alice@example.test"])
        self.assertEqual(session.protocol._transaction.envelope_recipients(),
                         (Recipient(Mailbox("PostMaster", "example.test"), Mailbox("alice", "example.test"),
                                    local=True),))
        self.assertEqual(session.send(b"RCPT TO:<nobody@example.test>\r\n"), lines(UNKNOWN_USER))
        session.resolver.accounts.add("postmaster@example.test")
        session.resolver.asked.clear()
        session.send(b"RSET\r\nMAIL FROM:<sender@elsewhere.test>\r\n")
        self.assertEqual(session.send(b"RCPT TO:<postmaster@example.test>\r\n"), lines(RCPT_OK))
        self.assertEqual(session.resolver.asked, ["postmaster@example.test"])

    def test_local_postmaster_address_to_remote_postmaster(self) -> None:
        """
        When the configured postmaster is elsewhere, C{postmaster@} a local
        domain without a mailbox is relayed to it, also for an untrusted
        client.
        """
        admin = Mailbox("admin", "elsewhere.test")
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, postmaster=admin))
        session.send(b"EHLO client.test\r\nMAIL FROM:<sender@elsewhere.test>\r\n")
        self.assertEqual(session.send(b"RCPT TO:<postmaster@example.test>\r\n"), lines(RCPT_OK))
        self.assertEqual(session.protocol._transaction.envelope_recipients(),
                         (Recipient(Mailbox("postmaster", "example.test"), admin, local=False),))

    def test_remote_postmaster_from_anyone(self) -> None:
        """
        A configured postmaster in another domain is reached through
        C{<Postmaster>} also by an untrusted client (RFC 5321 section
        4.5.1: it must be accepted); that address spelled out is relaying
        as usual.
        """
        admin = Mailbox("admin", "elsewhere.test")
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, postmaster=admin))
        session.send(b"EHLO client.test\r\nMAIL FROM:<sender@elsewhere.test>\r\n")
        self.assertEqual(session.send(b"RCPT TO:<admin@elsewhere.test>\r\n"), lines(RELAY_DENIED))
        self.assertEqual(session.send(b"RCPT TO:<PostMaster>\r\n"), lines(RCPT_OK))
        self.assertEqual(session.protocol._transaction.envelope_recipients(),
                         (Recipient(admin, admin, local=False),))

    def test_utf8_recipient(self) -> None:
        """
        A UTF-8 recipient is accepted only in an SMTPUTF8 transaction.
        """
        session = self.open_transaction()
        session.resolver.accounts.add("ü@example.test")
        self.assertEqual(
            session.send("RCPT TO:<ü@example.test>\r\n".encode()),
            lines("553 5.6.7 Error: non-ASCII recipient address requires SMTPUTF8"),
        )
        session.send(b"RSET\r\n")
        self.assertEqual(
            session.send("MAIL FROM:<a@b.test> SMTPUTF8\r\nRCPT TO:<ü@example.test>\r\n".encode()),
            lines(SENDER_OK, RCPT_OK),
        )

    def test_rcpt_syntax(self) -> None:
        """
        Bad RCPT arguments: 501 for syntax and the null path, 555 for
        parameters.
        """
        session = self.open_transaction()
        self.assertEqual(
            session.send(b"RCPT alice@example.test\r\nRCPT TO:<>\r\nRCPT TO:<alice@example.test> NOTIFY=NEVER\r\n"),
            lines(
                "501 5.5.4 Syntax: RCPT TO:<address>",
                "501 5.1.3 Bad recipient address syntax: null path",
                "555 5.5.4 Error: unsupported parameter NOTIFY",
            ),
        )

    def test_too_many_recipients(self) -> None:
        """
        RCPTs beyond the limit get 452 4.5.3; they are not counted as
        errors, and the accepted ones are delivered.
        """
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, max_recipients=2))
        session.resolver.accounts.update(f"u{i}@example.test" for i in range(20))
        session.send(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n")
        rcpts = b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(20))
        too_many = "452 4.5.3 Error: too many recipients"
        self.assertEqual(session.send(rcpts), lines(RCPT_OK, RCPT_OK, *[too_many] * 18))
        self.assertEqual(session.send(b"DATA\r\nx\r\n.\r\n"), lines(START, "250 2.0.0 Ok: queued as Q1"))
        self.assertEqual([r.target.local for r in session.spool.writers[0].envelope.recipients], ["u0", "u1"])


class DataTests(DialogueTestCase):
    def test_accepted_message(self) -> None:
        """
        A message is streamed to the spool with our C{Received:} header
        first, dot-unstuffed, and committed with its envelope; 250 names
        the queue id.
        """
        session = SMTPHarness(connect=False)
        session.clock.advance(1700000000)
        session.connect()
        self.assertEqual(
            session.send(
                b"EHLO client.test\r\n"
                b"MAIL FROM:<sender@elsewhere.test> BODY=8BITMIME SIZE=50\r\n"
                b"RCPT TO:<alice@example.test>\r\n"
                b"DATA\r\n"
            ),
            lines(*EHLO, SENDER_OK, RCPT_OK, START),
        )
        self.assertEqual(session.send(b"Subject: hi\r\n\r\n..leading dot\r\n.\r\n"), lines("250 2.0.0 Ok: queued as Q1"))
        writer = session.spool.writers[0]
        self.assertEqual(
            bytes(writer.data),
            b"Received: from client.test ([192.0.2.1])\r\n"
            b"\tby mx.example.test (mailappliance) with ESMTP id Q1\r\n"
            b"\tfor <alice@example.test>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
            b"Subject: hi\r\n\r\n.leading dot\r\n",
        )
        self.assertEqual(
            writer.envelope,
            Envelope(
                queue_id="Q1",
                sender=SENDER,
                recipients=(Recipient(ALICE, ALICE, local=True),),
                arrival=1700000000.0,
                size=len(writer.data),
                body="8BITMIME",
                smtputf8=False,
                client="helo=client.test addr=192.0.2.1",
                content="7bit",
            ),
        )
        self.assertEqual(writer.state, "committed")
        # The session goes on: a second transaction.
        self.assertEqual(
            session.send(b"MAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n.\r\nQUIT\r\n"),
            lines(SENDER_OK, RCPT_OK, RCPT_OK, START, "250 2.0.0 Ok: queued as Q2", BYE),
        )
        second = session.spool.writers[1]
        self.assertEqual(
            bytes(second.data),
            b"Received: from client.test ([192.0.2.1])\r\n"
            b"\tby mx.example.test (mailappliance) with ESMTP id Q2; Tue, 14 Nov 2023 22:13:20 +0000\r\n",
        )
        self.assertIsNone(second.envelope.sender)
        self.assertEqual([r.target for r in second.envelope.recipients], [BOB, ALICE])

    def test_no_header_section(self) -> None:
        """
        On the C{smtp} service too, a message whose first line is neither
        a header field nor empty (no header section) gets an empty line
        after our C{Received:}, so that its first line does not become a
        malformed field of our header; a message with a header section, an
        empty one, or no data at all is stored as it came, byte for byte.
        """
        received = (
            b"Received: from c ([192.0.2.1])\r\n"
            b"\tby mx.example.test (mailappliance) with ESMTP id Q%d\r\n"
            b"\tfor <alice@example.test>; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        )
        body_line = b"x" * 998 + b"\r\n"
        cases = [
            (b"hello world\r\n", b"\r\nhello world\r\n"),
            (b" indented\r\nSubject: no\r\n", b"\r\n indented\r\nSubject: no\r\n"),
            (b"From alice@example.test Tue Nov 14 2023\r\n\r\nx\r\n",
             b"\r\nFrom alice@example.test Tue Nov 14 2023\r\n\r\nx\r\n"),
            (b"..dot first\r\n", b"\r\n.dot first\r\n"),
            (body_line * 300, b"\r\n" + body_line * 300),
            (b"Subject: s\r\nno colon\r\n\r\nbody\r\n", b"Subject: s\r\nno colon\r\n\r\nbody\r\n"),
            (b"Subject : obsolete form\r\n", b"Subject : obsolete form\r\n"),
            (b"\r\nbody only\r\n", b"\r\nbody only\r\n"),
            (b"", b""),
        ]
        session = SMTPHarness()
        session.send(b"EHLO c\r\n")
        for number, (message, stored) in enumerate(cases, 1):
            # As sent (dot-stuffed), cut inside the first line.
            output = session.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
                                  message[:7], message[7:] + b".\r\n")
            self.assertEqual(output, lines(SENDER_OK, RCPT_OK, START, f"250 2.0.0 Ok: queued as Q{number}"), message)
            self.assertEqual(bytes(session.spool.writers[number - 1].data), received % number + stored, message)

    def test_received_protocols(self) -> None:
        """
        C{with SMTP} after HELO, C{with UTF8SMTP} for an SMTPUTF8 message.
        """
        session = SMTPHarness()
        session.send(b"HELO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n.\r\n")
        self.assertIn(b" with SMTP id Q1", bytes(session.spool.writers[0].data))
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test> SMTPUTF8\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n.\r\n")
        self.assertIn(b" with UTF8SMTP id Q2", bytes(session.spool.writers[1].data))
        self.assertTrue(session.spool.writers[1].envelope.smtputf8)

    def test_implicit_tls(self) -> None:
        """
        On an implicit-TLS connection the session's policy knows it is
        encrypted: C{with ESMTPS}.
        """
        session = SMTPHarness(connect=False)
        directlyProvides(session.transport, ISSLTransport)
        session.connect()
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n.\r\n")
        self.assertIn(b" with ESMTPS id Q1", bytes(session.spool.writers[0].data))

    def test_no_valid_recipients_pipelined(self) -> None:
        """
        When every RCPT was refused, DATA is 554 5.5.1 and the pipelined
        body that follows is read as commands (RFC 2920 section 3.1);
        nothing is queued.
        """
        session = SMTPHarness()
        self.assertEqual(
            session.send(
                b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n"
                b"NOOP\r\n.\r\nQUIT\r\n"
            ),
            lines(
                *EHLO,
                SENDER_OK,
                UNKNOWN_USER,
                "554 5.5.1 Error: no valid recipients",
                OK,
                "500 5.5.2 Error: command not recognized",
                BYE,
            ),
        )
        self.assertEqual(session.spool.writers, [])

    def test_smuggling_vectors(self) -> None:
        """
        Bare LF or CR never end the data: the message is read to the real
        CRLF.CRLF, refused with 550 5.6.0 and aborted, and the commands
        hidden in it are never run.
        """
        for vector in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n"):
            session = SMTPHarness()
            session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
            smuggled = b"MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nevil\r\n"
            self.assertEqual(
                session.send(b"DATA\r\nSubject: x\r\n\r\nhello" + vector + smuggled + b".\r\nQUIT\r\n"),
                lines(
                    START,
                    "550 5.6.0 Error: message contains bare CR or LF (line ends must be CRLF); not accepted",
                    BYE,
                ),
                vector,
            )
            self.assertEqual(len(session.spool.writers), 1)
            self.assertEqual(session.spool.writers[0].state, "aborted")
            self.assertEqual(session.resolver.asked, ["alice@example.test"])

    def test_only_dot(self) -> None:
        """
        A body of only C{.} is an empty message.
        """
        session = SMTPHarness()
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertEqual(session.send(b".\r\n"), lines("250 2.0.0 Ok: queued as Q1"))
        self.assertTrue(bytes(session.spool.writers[0].data).endswith(b" +0000\r\n"))

    def test_oversize_body(self) -> None:
        """
        A body over the limit is read to its end, refused with 552 5.3.4
        and aborted; the session stays usable.
        """
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, max_message_size=1024))
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        header_size = len(session.spool.writers[0].data)
        body = (b"x" * 98 + b"\r\n") * 11
        self.assertEqual(session.send(body[:500], body[500:], b".\r\n"),
                         lines("552 5.3.4 Error: message size exceeds fixed limit"))
        writer = session.spool.writers[0]
        self.assertEqual(writer.state, "aborted")
        self.assertLessEqual(len(writer.data), header_size + 1024)
        self.assertEqual(
            session.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nsmall\r\n.\r\n"),
            lines(SENDER_OK, RCPT_OK, START, "250 2.0.0 Ok: queued as Q2"),
        )

    def test_commit_failures(self) -> None:
        """
        A commit failing for lack of space is 452 4.3.1; any other failure
        451 4.3.0; both logged. The session goes on.
        """
        for error, expected in (
            (OSError(errno.ENOSPC, "No space left on device"), "452 4.3.1 Error: insufficient system storage"),
            (OSError(errno.EDQUOT, "Disk quota exceeded"), "452 4.3.1 Error: insufficient system storage"),
            (OSError(errno.EIO, "I/O error"), "451 4.3.0 Error: queue file write error"),
        ):
            session = SMTPHarness()
            session.spool.configure = lambda writer: setattr(writer, "commit_result", error)
            session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            self.assertEqual(session.send(b"x\r\n.\r\nNOOP\r\n"), lines(expected, OK))
            self.assertEqual(len([e for e in session.events if "log_failure" in e]), 1)

    def test_commit_waits(self) -> None:
        """
        250 is sent only once the commit fires, and pipelined commands
        after the data wait for it.
        """
        session = SMTPHarness()
        session.spool.configure = lambda writer: setattr(writer, "commit_result", "hold")
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertEqual(session.send(b"x\r\n.\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n"), b"")
        session.spool.writers[0].commit_deferred.callback("Q1")
        self.assertEqual(session.output(), lines("250 2.0.0 Ok: queued as Q1", SENDER_OK, BYE))

    def test_spool_unavailable(self) -> None:
        """
        If the spool cannot start a message, DATA is 451 4.3.0.
        """
        session = SMTPHarness()

        def broken(writer: object) -> None:
            raise OSError(errno.EIO, "I/O error")

        session.spool.configure = broken
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.send(b"DATA\r\n"), lines("451 4.3.0 Error: queue file write error"))


class LogTests(SynchronousTestCase):
    def test_story(self) -> None:
        """
        Connect, each refusal with its code, each accepted message and the
        disconnect are logged as key=value lines.
        """
        session = SMTPHarness()
        session.send(
            b"EHLO client.test\r\nMAIL FROM:<sender@elsewhere.test>\r\nRCPT TO:<nobody@example.test>\r\n"
            b"RCPT TO:<alice@example.test>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n"
        )
        session.lose()
        size = len(session.spool.writers[0].data)
        self.assertEqual(
            session.log_lines(),
            [
                "service=smtp event=connect peer=192.0.2.1 session=s1",
                'service=smtp event=reject peer=192.0.2.1 session=s1 cmd=RCPT from=<sender@elsewhere.test> '
                'to=<nobody@example.test> code=550 status=5.1.1 reason="Error: no such user here"',
                f"service=smtp qid=Q1 event=queued from=<sender@elsewhere.test> size={size} nrcpt=1 peer=192.0.2.1 session=s1",
                "service=smtp event=disconnect peer=192.0.2.1 session=s1 errors=1",
            ],
        )

    def test_data_refusal_has_qid(self) -> None:
        """
        A refused message's log line carries its queue id.
        """
        session = SMTPHarness()
        session.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\na\nb\r\n.\r\n")
        self.assertEqual(
            session.log_lines()[-1],
            'service=smtp qid=Q1 event=reject peer=192.0.2.1 session=s1 cmd=DATA from=<> code=550 status=5.6.0 '
            'reason="Error: message contains bare CR or LF (line ends must be CRLF); not accepted"',
        )
