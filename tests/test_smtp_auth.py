"""
Tests for L{mailappliance.smtp.auth}: the AUTH command (RFC 4954) in
sessions over a L{StringTransport}, its replies, the delays after failed
attempts (with a L{Clock}), and what is logged.
"""

from __future__ import annotations

import base64

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.smtp.auth import (
    MAX_AUTH_FAILURES_PER_SESSION,
    AuthFailureTracker,
)
from mailappliance.smtp.policy import SMTPSettings
from mailappliance.testing import FakeChecker, SMTPHarness, TLSCapableTransport
from tests.test_smtp_server import EHLO, HOST, OK, SENDER_OK, lines

SUBMISSION = SMTPSettings(hostname=HOST, service="submission")
PASSWORDS = {"alice@example.test": b"correct horse", "bob@example.test": b"battery staple"}

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
EHLO_AUTH = EHLO[:-1] + ("250-CHUNKING", "250 AUTH PLAIN LOGIN")
USERNAME_CHALLENGE = "334 VXNlcm5hbWU6"
PASSWORD_CHALLENGE = "334 UGFzc3dvcmQ6"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain(user: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    return b64(authzid + b"\0" + user + b"\0" + password)


def submission(peer: str = "127.0.0.1", ehlo: bool = True, **harness: object) -> SMTPHarness:
    """
    A submission session from C{peer} (trusted by default, so AUTH is
    offered without TLS), after EHLO.
    """
    harness.setdefault("checker", FakeChecker(PASSWORDS))
    session = SMTPHarness(settings=SUBMISSION, peer=peer, **harness)  # type: ignore[arg-type]
    if ehlo:
        session.send(b"EHLO client.test\r\n")
    return session


def ehlo_lines(peer: str, auth: bool) -> bytes:
    first = f"250-{HOST} Hello client.test [{peer}]"
    return lines(first, *(EHLO_AUTH if auth else EHLO)[1:])


class OfferTests(SynchronousTestCase):
    def test_mta_service(self) -> None:
        """
        The MTA service never offers AUTH, even with a checker, and
        answers it with 503 5.5.1.
        """
        session = SMTPHarness(peer="127.0.0.1", checker=FakeChecker(PASSWORDS))
        self.assertEqual(session.send(b"EHLO client.test\r\n"), ehlo_lines("127.0.0.1", auth=False))
        self.assertEqual(session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n"),
                         lines("503 5.5.1 Error: authentication not enabled"))

    def test_submission_untrusted_plaintext(self) -> None:
        """
        On submission without TLS from an untrusted address, AUTH is not
        offered and is answered 538 5.7.11; the password is not checked.
        """
        checker = FakeChecker(PASSWORDS)
        session = SMTPHarness(settings=SUBMISSION, peer="192.0.2.1", checker=checker)
        self.assertEqual(session.send(b"EHLO client.test\r\n"), ehlo_lines("192.0.2.1", auth=False))
        self.assertEqual(
            session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n"),
            lines("538 5.7.11 Encryption required for requested authentication mechanism"),
        )
        self.assertEqual(checker.seen, [])

    def test_submission_trusted_or_tls(self) -> None:
        """
        AUTH is offered on submission to a trusted address in plaintext,
        and to anyone once TLS is active.
        """
        trusted = SMTPHarness(settings=SUBMISSION, peer="127.0.0.1", checker=FakeChecker())
        self.assertEqual(trusted.send(b"EHLO client.test\r\n"), ehlo_lines("127.0.0.1", auth=True))
        tls = SMTPHarness(settings=SUBMISSION, peer="192.0.2.1", checker=FakeChecker(), tls=object(),
                          transport_class=TLSCapableTransport)
        before = tls.send(b"EHLO client.test\r\n")
        self.assertNotIn(b"AUTH", before)
        tls.send(b"STARTTLS\r\n")
        self.assertEqual(tls.send(b"EHLO client.test\r\n"), ehlo_lines("192.0.2.1", auth=True))

    def test_without_checker(self) -> None:
        """
        A service without a checker offers no AUTH.
        """
        session = SMTPHarness(settings=SUBMISSION, peer="127.0.0.1")
        self.assertEqual(session.send(b"EHLO client.test\r\n"), ehlo_lines("127.0.0.1", auth=False))
        self.assertEqual(session.send(b"AUTH PLAIN\r\n"), lines("503 5.5.1 Error: authentication not enabled"))


class PlainTests(SynchronousTestCase):
    def test_initial_response(self) -> None:
        """
        PLAIN with an initial response: 235, the log names the user, and
        MAIL is allowed.
        """
        session = submission()
        self.assertEqual(session.send(b"AUTH PLAIN " + plain(b"Alice@Example.test", b"correct horse") + b"\r\n"),
                         lines(AUTH_OK))
        self.assertEqual(session.send(b"MAIL FROM:<alice@example.test>\r\n"), lines(SENDER_OK))
        self.assertIn(
            "service=submission event=auth status=ok user=alice@example.test mechanism=PLAIN peer=127.0.0.1 session=s1",
            session.log_lines(),
        )

    def test_challenge(self) -> None:
        """
        PLAIN without an initial response gets an empty challenge
        (C{334 }); the response follows; lower-case mechanism names work.
        """
        session = submission()
        self.assertEqual(session.send(b"AUTH plain\r\n"), b"334 \r\n")
        self.assertEqual(session.send(plain(b"alice@example.test", b"correct horse") + b"\r\n"), lines(AUTH_OK))

    def test_pipelined_response(self) -> None:
        """
        The command and its response in one segment are answered in
        order.
        """
        session = submission()
        self.assertEqual(
            session.send(b"AUTH PLAIN\r\n" + plain(b"alice@example.test", b"correct horse") + b"\r\nNOOP\r\n"),
            b"334 \r\n" + lines(AUTH_OK, OK),
        )

    def test_authzid(self) -> None:
        """
        An authorization identity equal to the login name (in any case)
        is accepted.
        """
        session = submission()
        response = plain(b"alice@example.test", b"correct horse", authzid=b"ALICE@example.test")
        self.assertEqual(session.send(b"AUTH PLAIN " + response + b"\r\n"), lines(AUTH_OK))

    def test_other_authzid(self) -> None:
        """
        Acting as another user is refused with 535, without asking the
        checker.
        """
        session = submission()
        response = plain(b"alice@example.test", b"correct horse", authzid=b"bob@example.test")
        self.assertEqual(session.send(b"AUTH PLAIN " + response + b"\r\n"), b"")
        session.clock.advance(1)
        self.assertEqual(session.output(), lines(AUTH_FAILED))
        self.assertEqual(session.factory.checker.seen, [])

    def test_malformed(self) -> None:
        """
        A PLAIN message without its two NULs, or the empty initial
        response C{=}, fails like a wrong password.
        """
        for response in (b64(b"alice@example.test correct horse"), b"="):
            session = submission()
            self.assertEqual(session.send(b"AUTH PLAIN " + response + b"\r\n"), b"")
            session.clock.advance(1)
            self.assertEqual(session.output(), lines(AUTH_FAILED), response)


class LoginTests(SynchronousTestCase):
    def test_login(self) -> None:
        """
        LOGIN asks for the user name, then the password.
        """
        session = submission()
        self.assertEqual(session.send(b"AUTH LOGIN\r\n"), lines(USERNAME_CHALLENGE))
        self.assertEqual(session.send(b64(b"alice@example.test") + b"\r\n"), lines(PASSWORD_CHALLENGE))
        self.assertEqual(session.send(b64(b"correct horse") + b"\r\n"), lines(AUTH_OK))
        self.assertEqual(session.factory.checker.seen, [(b"alice@example.test", b"correct horse")])

    def test_initial_response(self) -> None:
        """
        An initial response to LOGIN is the user name.
        """
        session = submission()
        self.assertEqual(session.send(b"AUTH LOGIN " + b64(b"alice@example.test") + b"\r\n"),
                         lines(PASSWORD_CHALLENGE))
        self.assertEqual(session.send(b64(b"correct horse") + b"\r\n"), lines(AUTH_OK))

    def test_wrong_password(self) -> None:
        """
        A wrong LOGIN password gets 535 after the delay.
        """
        session = submission()
        session.send(b"AUTH LOGIN\r\n", b64(b"alice@example.test") + b"\r\n")
        self.assertEqual(session.send(b64(b"wrong") + b"\r\n"), b"")
        session.clock.advance(1)
        self.assertEqual(session.output(), lines(AUTH_FAILED))


class RefusalTests(SynchronousTestCase):
    def test_syntax_and_mechanisms(self) -> None:
        """
        501 without a mechanism or with too many words, 504 for a
        mechanism not offered.
        """
        session = submission()
        table = [
            (b"AUTH", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
            (b"AUTH PLAIN a b", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
            (b"AUTH CRAM-MD5", "504 5.5.4 Unrecognized authentication type"),
            (b"AUTH \xc3\xa9", "504 5.5.4 Unrecognized authentication type"),
            (b"AUTH GSSAPI =", "504 5.5.4 Unrecognized authentication type"),
        ]
        for send, expect in table:
            self.assertEqual(session.send(send + b"\r\n"), lines(expect), send)

    def test_sequence(self) -> None:
        """
        503 before EHLO (also after HELO), inside a transaction, and once
        authenticated.
        """
        session = submission(ehlo=False)
        self.assertEqual(session.send(b"AUTH PLAIN\r\n"), lines("503 5.5.1 Error: send EHLO first"))
        session.send(b"HELO client.test\r\n")
        self.assertEqual(session.send(b"AUTH PLAIN\r\n"), lines("503 5.5.1 Error: send EHLO first"))
        session.send(b"EHLO client.test\r\n")
        session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n")
        self.assertEqual(session.send(b"AUTH PLAIN\r\n"), lines("503 5.5.1 Error: already authenticated"))
        session.send(b"MAIL FROM:<alice@example.test>\r\n")
        self.assertEqual(session.send(b"AUTH LOGIN\r\n"), lines("503 5.5.1 Error: MAIL transaction in progress"))

    def test_bad_base64(self) -> None:
        """
        A response that is not base64 is 501 5.5.2 and ends the exchange;
        so is an initial response that is not.
        """
        session = submission()
        self.assertEqual(session.send(b"AUTH PLAIN not*base64\r\n"), lines("501 5.5.2 Error: invalid base64 data"))
        self.assertEqual(session.send(b"AUTH LOGIN\r\n"), lines(USERNAME_CHALLENGE))
        self.assertEqual(session.send(b"abc\r\n"), lines("501 5.5.2 Error: invalid base64 data"))
        self.assertEqual(session.send(b"NOOP\r\n"), lines(OK))
        self.assertEqual(session.factory.checker.seen, [])

    def test_bare_lf_response(self) -> None:
        """
        A response ended by a bare LF is 500 5.5.2 "bare <LF> received"
        at once and ends the exchange (the checker is never asked); the
        next line is a command again.
        """
        session = submission()
        self.assertEqual(session.send(b"AUTH LOGIN\r\n"), lines(USERNAME_CHALLENGE))
        self.assertEqual(session.send(b64(b"alice@example.test") + b"\n"),
                         lines("500 5.5.2 Error: bare <LF> received"))
        self.assertEqual(session.send(b"NOOP\r\n"), lines(OK))
        self.assertEqual(session.factory.checker.seen, [])

    def test_cancel(self) -> None:
        """
        C{*} cancels the exchange (501 5.0.0) at any step; the next line
        is a command again, and the checker is never asked.
        """
        session = submission()
        self.assertEqual(session.send(b"AUTH PLAIN\r\n*\r\n"),
                         b"334 \r\n" + lines("501 5.0.0 Authentication cancelled"))
        self.assertEqual(session.send(b"AUTH LOGIN " + b64(b"alice@example.test") + b"\r\n*\r\nNOOP\r\n"),
                         lines(PASSWORD_CHALLENGE, "501 5.0.0 Authentication cancelled", OK))
        self.assertEqual(session.factory.checker.seen, [])
        self.assertEqual(session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n"),
                         lines(AUTH_OK))

    def test_response_line_limits(self) -> None:
        """
        A response may be longer than a command line (up to 12288
        octets, RFC 4954 section 4); a longer one is 500 5.5.6 and ends
        the exchange.
        """
        session = submission()
        session.send(b"AUTH LOGIN\r\n")
        self.assertEqual(session.send(b"A" * 600 + b"\r\n"), b"")
        session.clock.advance(1)
        self.assertEqual(session.output(), lines(AUTH_FAILED))
        session.send(b"AUTH LOGIN\r\n")
        self.assertEqual(session.send(b"A" * 13000 + b"\r\nNOOP\r\n"),
                         lines("500 5.5.6 Authentication Exchange line is too long", OK))

    def test_checker_error(self) -> None:
        """
        A checker failure other than bad credentials is 454 4.7.0, at
        once, logged with its traceback; it does not count as a failure.
        """
        session = submission()
        session.factory.checker.error = OSError("disk pool broken")
        self.assertEqual(session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n"),
                         lines("454 4.7.0 Temporary authentication failure"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 0)
        self.assertTrue(any(event.get("log_failure") is not None for event in session.events))
        self.assertEqual(session.factory.auth_failures.failures("127.0.0.1"), 0)

    def test_too_many_logins(self) -> None:
        """
        When the password checks are full (a burst of logins), AUTH gets
        454 4.7.0 at once, logged on one line without a traceback; it does
        not count as a failed login.
        """
        from mailappliance.accounts.verifier import TooManyLogins

        session = submission()
        session.factory.checker.error = TooManyLogins()
        self.assertEqual(session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n"),
                         lines("454 4.7.0 Temporary authentication failure"))
        self.assertFalse(any(event.get("log_failure") is not None for event in session.events))
        self.assertIn('service=submission event=auth status=busy mechanism=PLAIN peer=127.0.0.1 session=s1 '
                      'reason="too many logins at once"', session.log_lines())
        self.assertEqual(session.factory.auth_failures.failures("127.0.0.1"), 0)

    def test_auth_parameter_of_mail(self) -> None:
        """
        MAIL's C{AUTH=} parameter (RFC 4954 section 5) is accepted and
        ignored, on both services.
        """
        session = submission()
        session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<alice@example.test> AUTH=<>\r\n"), lines(SENDER_OK))
        inbound = SMTPHarness()
        inbound.send(b"EHLO client.test\r\n")
        self.assertEqual(inbound.send(b"MAIL FROM:<a@b.test> AUTH=a+40b.test\r\n"), lines(SENDER_OK))
        self.assertEqual(inbound.protocol._transaction.mail.auth, "a+40b.test")


class FailureDelayTests(SynchronousTestCase):
    def fail_once(self, session: SMTPHarness) -> None:
        self.assertEqual(session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"guess") + b"\r\n"), b"")

    def test_growing_delay(self) -> None:
        """
        The 535 comes 1 s after the first failure, 2 s after the second:
        not a moment earlier, and the session reads nothing meanwhile.
        """
        session = submission()
        self.fail_once(session)
        session.clock.advance(0.999)
        self.assertEqual(session.send(b"NOOP\r\n"), b"")
        session.clock.advance(0.001)
        self.assertEqual(session.output(), lines(AUTH_FAILED, OK))
        self.fail_once(session)
        session.clock.advance(1.999)
        self.assertEqual(session.output(), b"")
        session.clock.advance(0.001)
        self.assertEqual(session.output(), lines(AUTH_FAILED))

    def test_disconnect_after_failures(self) -> None:
        """
        After L{MAX_AUTH_FAILURES_PER_SESSION} failures the session gets
        535 then 421 4.7.0 and is closed.
        """
        session = submission()
        for attempt in range(MAX_AUTH_FAILURES_PER_SESSION - 1):
            self.fail_once(session)
            session.clock.advance(2**attempt)
            self.assertEqual(session.output(), lines(AUTH_FAILED))
        self.fail_once(session)
        session.clock.advance(2 ** (MAX_AUTH_FAILURES_PER_SESSION - 1))
        self.assertEqual(session.output(),
                         lines(AUTH_FAILED, f"421 4.7.0 {HOST} Error: too many authentication failures"))
        self.assertTrue(session.closed)

    def test_other_sessions_not_stalled(self) -> None:
        """
        While one session waits out its delay, another (from another
        address) is answered at once and has its own, first, delay; a new
        session from the first address carries on the first address's
        count.
        """
        first = submission(peer="127.0.0.1")
        second = SMTPHarness(factory=first.factory, peer="127.0.0.2")
        self.fail_once(first)
        self.assertEqual(second.send(b"EHLO client.test\r\n"), ehlo_lines("127.0.0.2", auth=True))
        first.clock.advance(0.5)
        self.fail_once(second)
        first.clock.advance(0.5)
        self.assertEqual(first.output(), lines(AUTH_FAILED))
        self.assertEqual(second.output(), b"")
        first.clock.advance(0.5)
        self.assertEqual(second.output(), lines(AUTH_FAILED))
        third = SMTPHarness(factory=first.factory, peer="127.0.0.1")
        third.send(b"EHLO client.test\r\n")
        self.fail_once(third)
        first.clock.advance(1.999)
        self.assertEqual(third.output(), b"")
        first.clock.advance(0.001)
        self.assertEqual(third.output(), lines(AUTH_FAILED))

    def test_success_clears_count(self) -> None:
        """
        A successful login forgets the address's failures.
        """
        session = submission()
        self.fail_once(session)
        session.clock.advance(1)
        session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n")
        self.assertEqual(session.factory.auth_failures.failures("127.0.0.1"), 0)

    def test_connection_lost_during_delay(self) -> None:
        """
        A client that leaves during the delay gets nothing written, and
        nothing breaks when the delay ends.
        """
        session = submission()
        self.fail_once(session)
        session.lose()
        session.clock.advance(1)
        self.assertEqual(session.output(), b"")

    def test_log_never_shows_password(self) -> None:
        """
        A failure is logged with the login name tried, never the
        password, whatever the mechanism.
        """
        session = submission()
        self.fail_once(session)
        session.clock.advance(1)
        session.send(b"AUTH LOGIN\r\n", b64(b"bob@example.test") + b"\r\n", b64(b"hunter2") + b"\r\n")
        session.clock.advance(2)
        text = "\n".join(session.log_lines())
        self.assertIn(
            'service=submission event=auth status=failed user="alice@example.test" mechanism=PLAIN peer=127.0.0.1 session=s1 '
            'reason="invalid credentials" failures=1 delay=1',
            text,
        )
        self.assertIn('user="bob@example.test" mechanism=LOGIN', text)
        self.assertNotIn("guess", text)
        self.assertNotIn("hunter2", text)
        self.assertNotIn(plain(b"alice@example.test", b"guess").decode(), text)
        self.assertNotIn(b64(b"hunter2").decode(), text)


class AuthFailureTrackerTests(SynchronousTestCase):
    def test_doubling_and_cap(self) -> None:
        """
        Delays double from 1 s up to 16 s.
        """
        tracker = AuthFailureTracker(Clock())
        self.assertEqual([tracker.record_failure("p") for _ in range(7)], [1, 2, 4, 8, 16, 16, 16])
        self.assertEqual(tracker.failures("p"), 7)

    def test_forgotten_after_a_while(self) -> None:
        """
        Failures older than the memory no longer count.
        """
        clock = Clock()
        tracker = AuthFailureTracker(clock, memory=60)
        tracker.record_failure("p")
        tracker.record_failure("p")
        clock.advance(61)
        self.assertEqual(tracker.failures("p"), 0)
        self.assertEqual(tracker.record_failure("p"), 1)

    def test_bounded(self) -> None:
        """
        At most C{max_peers} addresses are remembered; the oldest go
        first.
        """
        clock = Clock()
        tracker = AuthFailureTracker(clock, max_peers=3)
        for peer in "abcd":
            clock.advance(1)
            tracker.record_failure(peer)
        self.assertEqual([tracker.failures(peer) for peer in "abcd"], [0, 1, 1, 1])
