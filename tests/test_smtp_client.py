# -*- test-case-name: tests.test_smtp_client -*-
"""
Tests for L{mailappliance.smtp.client.deliver}: the real client against
L{mailappliance.testing.FakeSMTPPeer} in memory, with real TLS, on a
L{MemoryReactorClock}.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task, tcp
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailappliance import testing
from mailappliance.address import parse_mailbox
from mailappliance.queue.routing import RouteHost
from mailappliance.smtp import client
from mailappliance.smtp.client import ClientOptions, OutboundMessage, deliver
from mailappliance.smtp.client_tls import (
    UnverifiedClientTLS,
    VerifiedClientTLS,
    client_tls_creator,
    tls_host_name,
)
from mailappliance.smtp.commands import CommandRefused, parse_rcpt

BODY = b"From: alice@local.test\r\nSubject: hello\r\n\r\n.\r\n..two dots\r\nbye\r\n"
MX1 = RouteHost("mx1.test", ("192.0.2.1",), 25)
MX2 = RouteHost("mx2.test", ("192.0.2.2",), 25)
RECIPIENTS = ("one@remote.test", "two@remote.test", "three@remote.test")

# One certificate pair per test run: generating keys is the slow part.
CERT, KEY = testing.make_certificate("mx1.test")
OTHER_CERT, OTHER_KEY = testing.make_certificate("other.test")
# The host's name only as the subject's common name, without subjectAltName.
NO_SAN_CERT, NO_SAN_KEY = testing.make_certificate("mx1.test", subject_alt_name=False)


class ClientTestCase(SynchronousTestCase):
    """
    Runs L{deliver} on a L{MemoryReactorClock}; L{serve} joins its
    pending connection to a fake peer.
    """

    def make_directory(self) -> str:
        """
        A new empty directory under the test's temporary tree.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        directory = self.make_directory()
        self.body_path = os.path.join(directory, "body")
        self.write_body(BODY)

    def write_body(self, body: bytes) -> None:
        with open(self.body_path, "wb") as f:
            f.write(body)

    def message(self, **fields) -> OutboundMessage:
        values = {
            "sender": "alice@local.test",
            "recipients": RECIPIENTS,
            "body_path": self.body_path,
            "size": os.path.getsize(self.body_path),
            "queue_id": "Q1",
        }
        values.update(fields)
        return OutboundMessage(**values)

    def start(self, hosts=(MX1,), message=None, reactor=None, **options):
        options.setdefault("tls", "opportunistic")
        return deliver(
            reactor or self.reactor, hosts, message or self.message(), ClientOptions("client.test", **options)
        )

    def serve(self, peer, index: int = 0):
        """
        Connect the pending attempt to C{peer} and run the dialogue.
        """
        pump = testing.connect_pending(self.reactor, peer, index)
        pump.flush()
        return pump

    def pending(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def statuses(self, outcome) -> dict[str, tuple[str, str]]:
        return {r.recipient: (r.status, r.enhanced_status) for r in outcome.results}


class DeliveryTests(ClientTestCase):
    """
    Per-recipient results over a plain connection.
    """

    def test_accept_all(self) -> None:
        """
        Every recipient delivered; the peer got the message exactly,
        unstuffed; the outcome names the host.
        """
        d = self.start()
        self.assertEqual(self.pending(), [("192.0.2.1", 25)])
        peer = testing.FakeSMTPPeer()
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertEqual(
            [(r.recipient, r.status, r.reply, r.host, r.remote) for r in outcome.results],
            [(r, "delivered", "250 2.0.0 OK queued", "mx1.test", True) for r in RECIPIENTS],
        )
        self.assertEqual((outcome.host, outcome.address, outcome.port, outcome.tls), ("mx1.test", "192.0.2.1", 25, False))
        [session] = peer.sessions
        self.assertEqual(session.messages, [BODY])
        self.assertEqual(session.helo, "client.test")
        self.assertEqual(session.mail_from, "alice@local.test")
        self.assertEqual(session.rcpt_to, list(RECIPIENTS))
        self.assertEqual(session.commands[-1], b"QUIT")

    def test_rejected_and_deferred(self) -> None:
        """
        One recipient refused (5xx), one deferred (4xx), one delivered.
        """
        peer = testing.FakeSMTPPeer()
        peer.reject("one@remote.test")
        peer.defer("two@remote.test")
        d = self.start()
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertEqual(
            self.statuses(outcome),
            {
                "one@remote.test": ("permanent", "5.1.1"),
                "two@remote.test": ("temporary", "4.2.1"),
                "three@remote.test": ("delivered", "2.0.0"),
            },
        )
        self.assertEqual(outcome.result_for("one@remote.test").reply, testing.REJECT_REPLY)
        self.assertEqual(peer.sessions[0].rcpt_to, ["three@remote.test"])

    def test_mail_refused_permanently(self) -> None:
        """
        A 5xx to MAIL fails all recipients permanently; the next host is
        not tried.
        """
        d = self.start(hosts=(MX1, MX2))
        self.serve(testing.FakeSMTPPeer(mail_reply="550 5.7.1 Sender blocked"))
        outcome = self.successResultOf(d)
        self.assertEqual(set(self.statuses(outcome).values()), {("permanent", "5.7.1")})
        self.assertEqual(self.pending(), [])

    def test_greeting_421_then_next_host(self) -> None:
        """
        A 421 greeting moves on to the next host, after a QUIT.
        """
        busy = testing.FakeSMTPPeer(greeting="421 4.3.2 Too busy")
        good = testing.FakeSMTPPeer()
        d = self.start(hosts=(MX1, MX2))
        self.serve(busy)
        self.assertEqual(busy.sessions[0].commands, [b"QUIT"])
        self.assertEqual(self.pending(), [("192.0.2.2", 25)])
        self.serve(good)
        outcome = self.successResultOf(d)
        self.assertEqual(outcome.host, "mx2.test")
        self.assertEqual({r.host for r in outcome.results}, {"mx2.test"})
        self.assertEqual(len(good.sessions[0].messages), 1)

    def test_refused_then_next_address_and_host(self) -> None:
        """
        Connection refused: the next address (IPv6 too), then the next
        host.
        """
        dual = RouteHost("mx1.test", ("192.0.2.1", "2001:db8::1"), 2525)
        d = self.start(hosts=(dual, MX2))
        testing.refuse_pending(self.reactor)
        self.assertEqual(self.pending(), [("2001:db8::1", 2525)])
        testing.refuse_pending(self.reactor)
        self.assertEqual(self.pending(), [("192.0.2.2", 25)])
        self.serve(testing.FakeSMTPPeer())
        self.assertEqual(self.successResultOf(d).delivered[0].host, "mx2.test")

    def test_all_refused(self) -> None:
        """
        When no host can be reached every recipient fails temporarily,
        naming the last problem.
        """
        d = self.start(hosts=(MX1, MX2))
        testing.refuse_pending(self.reactor)
        testing.refuse_pending(self.reactor)
        outcome = self.successResultOf(d)
        [result] = {r.reply for r in outcome.results}
        self.assertTrue(result.startswith("cannot connect to mx2.test[192.0.2.2]:25: ConnectionRefusedError"), result)
        self.assertEqual(set(self.statuses(outcome).values()), {("temporary", "4.4.1")})
        self.assertEqual({(r.host, r.remote) for r in outcome.results}, {("mx2.test", False)})

    def test_connect_timeout(self) -> None:
        """
        A connection attempt not answered within C{connect_timeout} is
        abandoned and the next host tried.
        """
        d = self.start(hosts=(MX1, MX2), connect_timeout=7)
        connector = self.reactor.connectors[0]
        self.reactor.advance(6.9)
        self.assertEqual(self.pending(), [("192.0.2.1", 25)])
        self.reactor.advance(0.1)
        self.assertTrue(connector.stoppedConnecting)
        # The memory reactor keeps the abandoned attempt on its list.
        self.assertEqual(self.pending(), [("192.0.2.1", 25), ("192.0.2.2", 25)])
        self.reactor.advance(7)
        outcome = self.successResultOf(d)
        self.assertEqual(outcome.results[0].reply, "cannot connect to mx2.test[192.0.2.2]:25: timed out after 7s")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_host_without_addresses(self) -> None:
        """
        A host given by name only is resolved through the reactor.
        """
        from twisted.internet.test.test_endpoints import deterministicResolvingReactor

        resolving = deterministicResolvingReactor(self.reactor, ["192.0.2.9"])
        d = self.start(hosts=(RouteHost("smarthost.test", (), 587),), reactor=resolving)
        self.reactor.advance(0)
        self.assertEqual(self.pending(), [("192.0.2.9", 587)])
        self.serve(testing.FakeSMTPPeer())
        outcome = self.successResultOf(d)
        self.assertEqual((outcome.host, outcome.address), ("smarthost.test", "192.0.2.9"))

    def test_dropped_after_dot_then_next_host(self) -> None:
        """
        A connection lost before the reply to the final dot leaves the
        recipients undecided: the next host gets the message.
        """
        d = self.start(hosts=(MX1, MX2))
        self.serve(testing.FakeSMTPPeer(drop_at="dot"))
        good = testing.FakeSMTPPeer()
        self.serve(good)
        self.assertEqual(len(self.successResultOf(d).delivered), 3)
        self.assertEqual(good.sessions[0].messages, [BODY])

    def test_reply_timeout_scaled(self) -> None:
        """
        A peer that falls silent after MAIL times out after the scaled
        MAIL time-out; the recipients fail temporarily.
        """
        d = self.start(timeout_factor=0.01)
        self.serve(testing.FakeSMTPPeer(hang_at="mail"))
        self.reactor.advance(2.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        outcome = self.successResultOf(d)
        self.assertEqual(outcome.results[0].reply, "timed out after 3s waiting for reply to MAIL")
        self.assertEqual(outcome.results[0].enhanced_status, "4.4.2")

    def test_missing_body(self) -> None:
        """
        An unreadable spool file fails temporarily (4.3.0) without
        connecting.
        """
        message = self.message()
        os.unlink(self.body_path)
        d = self.start(message=message)
        outcome = self.successResultOf(d)
        self.assertEqual(set(self.statuses(outcome).values()), {("temporary", "4.3.0")})
        self.assertEqual(self.pending(), [])

    def test_truncated_body_is_our_problem(self) -> None:
        """
        A queued message shorter than its envelope says cannot be sent
        whole: temporary 4.3.0, not tried at another host, and logged as
        our own error, not the host's failure.
        """
        events = []
        self.patch(client.log, "observer", events.append)
        peer = testing.FakeSMTPPeer()
        d = self.start(hosts=(MX1, MX2), message=self.message(size=os.path.getsize(self.body_path) + 100))
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertEqual(set(self.statuses(outcome).values()), {("temporary", "4.3.0")})
        self.assertEqual(len(self.pending()), 0)
        [line] = [formatEvent(e) for e in events]
        self.assertIn(" status=local-error dsn=4.3.0 reason='cannot read the queued message: ", line)

    def test_unsafe_recipient_and_duplicates(self) -> None:
        """
        A recipient that cannot be put on the wire (CR LF would inject a
        command) fails permanently without being sent; duplicates are sent
        once.
        """
        bad = "x@remote.test>\r\nRCPT TO:<y@remote.test"
        peer = testing.FakeSMTPPeer()
        d = self.start(message=self.message(recipients=(bad, "one@remote.test", "one@remote.test")))
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertEqual([r.recipient for r in outcome.results], [bad, "one@remote.test"])
        self.assertEqual(self.statuses(outcome)[bad], ("permanent", "5.1.3"))
        self.assertEqual(peer.sessions[0].rcpt_to, ["one@remote.test"])

    def test_quoted_local_part(self) -> None:
        """
        A quoted local part with a space (or other characters a dot-atom
        cannot hold) is a valid mailbox (RFC 5321 section 4.1.2): it is
        sent quoted, in MAIL FROM and in RCPT TO, and delivered.
        """
        recipients = ('"john doe"@remote.test', '"a<b>\\"c"@remote.test', "plain@remote.test")
        peer = testing.FakeSMTPPeer()
        d = self.start(message=self.message(sender='"jane roe"@local.test', recipients=recipients))
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertEqual(self.statuses(outcome), {r: ("delivered", "2.0.0") for r in recipients})
        [session] = peer.sessions
        self.assertEqual(
            [c for c in session.commands if c.startswith((b"MAIL", b"RCPT"))],
            [
                b'MAIL FROM:<"jane roe"@local.test>',
                b'RCPT TO:<"john doe"@remote.test>',
                b'RCPT TO:<"a<b>\\"c"@remote.test>',
                b"RCPT TO:<plain@remote.test>",
            ],
        )
        self.assertEqual(session.mail_from, '"jane roe"@local.test')
        self.assertEqual(session.rcpt_to, list(recipients))

    def test_unsafe_addresses(self) -> None:
        """
        What our own server refuses as a path is never sent: controls (CR,
        LF, NUL) even inside quotes, an unquoted space or bracket, an
        over-long local part. Each such recipient fails permanently (5.1.3)
        without a connection; such a sender fails every recipient (5.1.7).
        """
        unsafe = (
            '"john\r\ndoe"@remote.test',
            '"john\ndoe"@remote.test',
            '"john\x00doe"@remote.test',
            "john doe@remote.test",
            "john>doe@remote.test",
            "<john@remote.test>",
            "x" * 65 + "@remote.test",
            "remote.test",
        )
        d = self.start(message=self.message(recipients=unsafe))
        outcome = self.successResultOf(d)
        self.assertEqual(self.statuses(outcome), {r: ("permanent", "5.1.3") for r in unsafe})
        self.assertEqual(outcome.results[0].reply, "invalid recipient address '\"john\\r\\ndoe\"@remote.test'")
        self.assertEqual(self.pending(), [])
        d = self.start(message=self.message(sender='"jane\nroe"@local.test'))
        outcome = self.successResultOf(d)
        self.assertEqual(set(self.statuses(outcome).values()), {("permanent", "5.1.7")})
        self.assertEqual(self.pending(), [])

    def test_null_sender(self) -> None:
        """
        The null reverse-path (a bounce) is sent as C{MAIL FROM:<>}.
        """
        peer = testing.FakeSMTPPeer()
        d = self.start(message=self.message(sender="", recipients=("one@remote.test",)))
        self.serve(peer)
        self.assertEqual(self.statuses(self.successResultOf(d)), {"one@remote.test": ("delivered", "2.0.0")})
        self.assertIn(b"MAIL FROM:<>", peer.sessions[0].commands)


    def test_unexpected_error_ends_the_session_only(self) -> None:
        """
        A bug in a session (here: a sender that cannot be encoded) is
        logged, aborts that connection and fails the recipients
        temporarily; no other host is tried and L{deliver} does not fail.
        """
        d = self.start(hosts=(MX1, MX2), message=self.message(sender="a\udc80@local.test"))
        self.serve(testing.FakeSMTPPeer())
        outcome = self.successResultOf(d)
        self.assertEqual(set(self.statuses(outcome).values()), {("temporary", "4.3.0")})
        self.assertTrue(outcome.results[0].reply.startswith("internal error: UnicodeEncodeError"))
        self.assertEqual(self.pending(), [])
        self.assertEqual(len(self.flushLoggedErrors(UnicodeEncodeError)), 1)

    def test_no_hosts(self) -> None:
        """
        Without hosts every recipient fails temporarily.
        """
        outcome = self.successResultOf(self.start(hosts=()))
        self.assertEqual(outcome.results[0].reply, "no host to deliver to")
        self.assertEqual(outcome.host, None)

    def test_log_lines(self) -> None:
        """
        A successful delivery logs nothing here: the relay logs one line per
        recipient (with the queue delay); only host problems are logged.
        """
        events = []
        self.patch(client.log, "observer", events.append)
        d = self.start(message=self.message(recipients=("one@remote.test",)))
        self.serve(testing.FakeSMTPPeer())
        self.successResultOf(d)
        self.assertEqual(events, [])


class AddressAgreementTests(SynchronousTestCase):
    """
    The client sends exactly the addresses our own server accepts, and
    what it writes our server reads back as the same mailbox.
    """

    @settings(max_examples=500, deadline=None)
    @given(st.text(alphabet=st.sampled_from(list('<>@:,."\\ab.-[]\x00\r\n\té+ ')), max_size=30))
    def test_agreement(self, text) -> None:
        """
        For any C{TO:<text>}: if the inbound parser accepts it, the client
        accepts the queued form (C{str} of the mailbox) and its RCPT
        command parses back to the same mailbox; if the client accepts
        C{text} as it is, the inbound parser takes C{TO:<text>} for the
        same mailbox.
        """
        try:
            inbound = parse_rcpt(b"TO:<" + text.encode("utf-8") + b">", True, "local.test")
        except CommandRefused:
            inbound = None
        if inbound is not None:
            queued = str(inbound)
            self.assertFalse(client._unsafe_address(queued), queued)
            self.assertEqual(parse_rcpt(b"TO:<" + queued.encode("utf-8") + b">", True, "local.test"), inbound)
        if not client._unsafe_address(text):
            self.assertEqual(parse_rcpt(b"TO:<" + text.encode("utf-8") + b">", True, "local.test"),
                             parse_mailbox(text))

    def test_examples(self) -> None:
        """
        Quoted local parts with a space, brackets or an escaped quote are
        accepted both ways; a space or a control where the inbound server
        refuses it is refused by the client too.
        """
        for text in ('"john doe"@remote.test', '"a<b>"@remote.test', '"a\\"b"@remote.test', "jos\u00e9@remote.test"):
            self.assertFalse(client._unsafe_address(text), text)
            self.assertEqual(str(parse_rcpt(b"TO:<" + text.encode("utf-8") + b">", True, "x.test")), text)
        for text in ("john doe@remote.test", '"a\rb"@remote.test', '"a\x00b"@remote.test', "a@b@remote.test"):
            self.assertTrue(client._unsafe_address(text), text)
            self.assertRaises(CommandRefused, parse_rcpt, b"TO:<" + text.encode("utf-8") + b">", True, "x.test")

class ExtensionTests(ClientTestCase):
    """
    PIPELINING, SIZE, 8BITMIME, SMTPUTF8 against the fake.
    """

    def test_pipelined(self) -> None:
        """
        With PIPELINING, MAIL, the RCPTs and DATA reach the server in one
        read.
        """
        peer = testing.FakeSMTPPeer(pipelining=True)
        d = self.start()
        self.serve(peer)
        self.successResultOf(d)
        expected = [b"MAIL FROM:<alice@local.test>"] + [b"RCPT TO:<%s>" % r.encode() for r in RECIPIENTS] + [b"DATA"]
        self.assertIn(expected, peer.sessions[0].arrivals)

    def test_lock_step(self) -> None:
        """
        Without PIPELINING each command arrives on its own.
        """
        peer = testing.FakeSMTPPeer(pipelining=False)
        d = self.start()
        self.serve(peer)
        self.successResultOf(d)
        self.assertEqual(
            peer.sessions[0].arrivals,
            [[b"EHLO client.test"], [b"MAIL FROM:<alice@local.test>"]]
            + [[b"RCPT TO:<%s>" % r.encode()] for r in RECIPIENTS]
            + [[b"DATA"], [b"QUIT"]],
        )

    def test_size_too_small(self) -> None:
        """
        SIZE smaller than the message: permanent 5.3.4, no MAIL.
        """
        peer = testing.FakeSMTPPeer(size=len(BODY) - 1)
        d = self.start()
        self.serve(peer)
        self.assertEqual(set(self.statuses(self.successResultOf(d)).values()), {("permanent", "5.3.4")})
        self.assertEqual(peer.sessions[0].commands, [b"EHLO client.test", b"QUIT"])

    def test_size_declared(self) -> None:
        """
        SIZE large enough: MAIL carries C{SIZE=}.
        """
        peer = testing.FakeSMTPPeer(size=len(BODY))
        d = self.start()
        self.serve(peer)
        self.successResultOf(d)
        self.assertEqual(peer.sessions[0].mail_parameters, [f"SIZE={len(BODY)}"])

    def test_eight_bit_to_seven_bit_server(self) -> None:
        """
        An 8-bit message to a server without 8BITMIME: permanent 5.6.3.
        """
        d = self.start(message=self.message(eight_bit=True))
        self.serve(testing.FakeSMTPPeer(eight_bit_mime=False))
        self.assertEqual(set(self.statuses(self.successResultOf(d)).values()), {("permanent", "5.6.3")})

    def test_seven_bit_to_seven_bit_server(self) -> None:
        """
        A message that needs neither 8BITMIME nor SMTPUTF8 (what the relay
        decides for an all-ASCII message, whatever was declared) goes to
        a server that offers neither, with no C{BODY=} and no
        C{SMTPUTF8}.
        """
        peer = testing.FakeSMTPPeer(eight_bit_mime=False, smtputf8=False)
        d = self.start(message=self.message(eight_bit=False, smtputf8=False))
        self.serve(peer)
        self.assertEqual(set(self.statuses(self.successResultOf(d)).values()), {("delivered", "2.0.0")})
        self.assertEqual(peer.sessions[0].mail_from, "alice@local.test")
        self.assertEqual(peer.sessions[0].mail_parameters, [])

    def test_smtputf8_not_offered(self) -> None:
        """
        SMTPUTF8 needed and not offered: permanent 5.6.7.
        """
        d = self.start(message=self.message(smtputf8=True))
        self.serve(testing.FakeSMTPPeer(smtputf8=False))
        self.assertEqual(set(self.statuses(self.successResultOf(d)).values()), {("permanent", "5.6.7")})

    def test_large_body_with_dots_on_16k_boundaries(self) -> None:
        """
        A 1 MiB body with lone-dot lines at every 16 KiB boundary (and a
        fake command after each) arrives intact, in one transaction.
        """
        block = 16 * 1024
        part = b".\r\nRSET\r\n" + b"z" * (block - 11) + b"\r\n"
        self.assertEqual(len(part), block)
        body = part * 64
        self.write_body(body)
        peer = testing.FakeSMTPPeer()
        d = self.start()
        self.serve(peer)
        self.assertEqual(len(self.successResultOf(d).delivered), 3)
        self.assertEqual(peer.sessions[0].messages, [body])
        self.assertNotIn(b"RSET", peer.sessions[0].commands)


    def test_queue_file_sends_body_only(self) -> None:
        """
        A queue file of layout version 2 (the body, then the envelope and
        its trailer): only the first C{size} bytes are sent, and C{SIZE=}
        declares them.
        """
        from mailappliance.queue.layout import encode_tail
        from tests.test_queue_writer import make_envelope

        tail = encode_tail(make_envelope(queue_id="0000000000000AAA", size=len(BODY)))
        self.write_body(BODY + tail)
        peer = testing.FakeSMTPPeer()
        d = self.start(message=self.message(size=len(BODY)))
        self.serve(peer)
        self.assertEqual(len(self.successResultOf(d).delivered), len(RECIPIENTS))
        self.assertEqual(peer.sessions[0].messages, [BODY])
        self.assertNotIn(b"MAQ2", b"".join(peer.sessions[0].commands))

class TLSTests(ClientTestCase):
    """
    STARTTLS with real TLS in memory.
    """

    def peer(self, cert=CERT, key=KEY, **kwargs):
        return testing.FakeSMTPPeer(tls_options=testing.server_tls_options(cert, key), **kwargs)

    def test_opportunistic_unverified(self) -> None:
        """
        Opportunistic TLS accepts an untrusted certificate, sends SNI, and
        reports the protocol and cipher.
        """
        peer = self.peer(cert=OTHER_CERT, key=OTHER_KEY)
        d = self.start(tls="opportunistic")
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertEqual(len(outcome.delivered), 3)
        self.assertTrue(outcome.tls)
        self.assertTrue(outcome.tls_protocol.startswith("TLSv1."), outcome.tls_protocol)
        self.assertTrue(outcome.tls_cipher)
        self.assertTrue(peer.sessions[0].tls)
        self.assertEqual(peer.sessions[0].messages, [BODY])
        self.assertEqual(peer.sessions[0].tls_server_name, "mx1.test")

    def test_verified(self) -> None:
        """
        With verification, a certificate for the host name from a trusted
        root is accepted.
        """
        peer = self.peer()
        d = self.start(tls="required", tls_verify=True, trust_root=testing.trust_root(CERT))
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertEqual(len(outcome.delivered), 3)
        self.assertTrue(outcome.tls)

    def test_verified_with_ssl_cert_file(self) -> None:
        """
        Without an explicit trust root the system store is used, which
        honours C{SSL_CERT_FILE}.
        """
        path = os.path.join(self.make_directory(), "ca.pem")
        with open(path, "wb") as f:
            f.write(CERT)
        previous = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = path
        self.addCleanup(_restore_environ, "SSL_CERT_FILE", previous)
        d = self.start(tls="required", tls_verify=True)
        self.serve(self.peer())
        self.assertTrue(self.successResultOf(d).tls)

    def test_required_verification_failure(self) -> None:
        """
        tls="required" and a certificate for another name: the host fails
        temporarily (4.7.5) before any MAIL.
        """
        peer = self.peer(cert=OTHER_CERT, key=OTHER_KEY)
        d = self.start(tls="required", tls_verify=True, trust_root=testing.trust_root(OTHER_CERT))
        self.serve(peer)
        self.assertEqual(peer.sessions[0].commands, [b"EHLO client.test", b"STARTTLS"])
        outcome = self.successResultOf(d)
        self.assertEqual(set(self.statuses(outcome).values()), {("temporary", "4.7.5")})
        reply = outcome.results[0].reply
        self.assertTrue(reply.startswith("TLS handshake failed: VerificationError"), reply)

    def test_required_certificate_without_subject_alt_name(self) -> None:
        """
        A trusted certificate without subjectAltName fails verification
        like a wrong name, even when its common name is the host's (RFC
        6125 section 6.4.4: no CN fallback once DNS-IDs are supported): the
        host fails temporarily (4.7.5), nothing follows STARTTLS (no EHLO,
        AUTH or MAIL, in the clear or not), and nothing is logged as an
        error.
        """
        for host in (MX1, RouteHost("127.0.0.1", ("127.0.0.1",), 25)):
            peer = self.peer(cert=NO_SAN_CERT, key=NO_SAN_KEY, auth=("user@local.test", "s3cret"))
            d = self.start(hosts=(host,), tls="required", tls_verify=True, trust_root=testing.trust_root(NO_SAN_CERT),
                           auth=("user@local.test", "s3cret"))
            self.serve(peer)
            self.assertEqual(peer.sessions[0].commands, [b"EHLO client.test", b"STARTTLS"])
            self.assertIsNone(peer.sessions[0].auth_identity)
            self.assertEqual(peer.sessions[0].messages, [])
            outcome = self.successResultOf(d)
            self.assertEqual(set(self.statuses(outcome).values()), {("temporary", "4.7.5")})
            self.assertEqual(
                outcome.results[0].reply,
                "TLS handshake failed: CertificateError: Certificate does not contain any `subjectAltName`s.",
            )
            self.assertEqual(self.flushLoggedErrors(), [])

    def test_required_untrusted_certificate(self) -> None:
        """
        A certificate that names the host but does not chain to the trust
        root fails (4.7.5) before any MAIL: the identity check does not
        replace the chain check.
        """
        peer = self.peer()
        d = self.start(tls="required", tls_verify=True, trust_root=testing.trust_root(OTHER_CERT))
        self.serve(peer)
        self.assertEqual(peer.sessions[0].commands, [b"EHLO client.test", b"STARTTLS"])
        outcome = self.successResultOf(d)
        self.assertEqual(set(self.statuses(outcome).values()), {("temporary", "4.7.5")})
        reply = outcome.results[0].reply
        self.assertTrue(reply.startswith("TLS handshake failed: Error: "), reply)
        self.assertIn("certificate verify failed", reply)

    def test_verification_failure_then_next_host(self) -> None:
        """
        After a failed verification the next host is tried, and one whose
        certificate matches its name takes the message.
        """
        other = RouteHost("other.test", ("192.0.2.2",), 25)
        d = self.start(hosts=(MX1, other), tls="required", tls_verify=True, trust_root=testing.trust_root(OTHER_CERT))
        self.serve(self.peer(cert=OTHER_CERT, key=OTHER_KEY))
        self.assertEqual(self.pending(), [("192.0.2.2", 25)])
        peer = self.peer(cert=OTHER_CERT, key=OTHER_KEY)
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertEqual(len(outcome.delivered), 3)
        self.assertEqual((outcome.host, outcome.tls), ("other.test", True))
        self.assertEqual(peer.sessions[0].messages, [BODY])

    def test_opportunistic_handshake_failure_retries_in_clear(self) -> None:
        """
        Opportunistic TLS whose handshake fails (here: verification) tries
        the same address again without TLS.
        """
        first = self.peer(cert=OTHER_CERT, key=OTHER_KEY)
        d = self.start(tls="opportunistic", tls_verify=True, trust_root=testing.trust_root(CERT))
        self.serve(first)
        self.assertEqual(self.pending(), [("192.0.2.1", 25)])
        second = self.peer(cert=OTHER_CERT, key=OTHER_KEY)
        self.serve(second)
        outcome = self.successResultOf(d)
        self.assertEqual(len(outcome.delivered), 3)
        self.assertFalse(outcome.tls)
        self.assertNotIn(b"STARTTLS", second.sessions[0].commands)

    def test_required_not_offered(self) -> None:
        """
        tls="required" and no STARTTLS: temporary 4.7.5.
        """
        d = self.start(tls="required")
        self.serve(testing.FakeSMTPPeer())
        outcome = self.successResultOf(d)
        self.assertEqual(set(self.statuses(outcome).values()), {("temporary", "4.7.5")})
        self.assertEqual(outcome.results[0].reply, "TLS is required but mx1.test does not offer STARTTLS")

    def test_none_ignores_starttls(self) -> None:
        """
        tls="none" does not use an offered STARTTLS.
        """
        peer = self.peer()
        d = self.start(tls="none")
        self.serve(peer)
        self.assertFalse(self.successResultOf(d).tls)
        self.assertFalse(peer.sessions[0].tls)

    def test_injection_through_real_tls(self) -> None:
        """
        Bytes sent after the 220 to STARTTLS, before the handshake, are
        not taken as a reply: delivery proceeds normally over TLS.
        """
        peer = self.peer(after_starttls_reply=b"250-mx1.test\r\n250 AUTH PLAIN\r\n")
        d = self.start(tls="opportunistic")
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertTrue(outcome.tls)
        self.assertEqual(len(outcome.delivered), 3)

    def test_auth_plain(self) -> None:
        """
        AUTH PLAIN over TLS.
        """
        peer = self.peer(auth=("user@local.test", "s3cret"))
        d = self.start(tls="required", auth=("user@local.test", "s3cret"))
        self.serve(peer)
        self.assertEqual(len(self.successResultOf(d).delivered), 3)
        self.assertEqual(peer.sessions[0].auth_identity, "user@local.test")
        self.assertTrue(peer.sessions[0].commands[3].startswith(b"AUTH PLAIN "))

    def test_auth_login(self) -> None:
        """
        AUTH LOGIN when PLAIN is not offered.
        """
        peer = self.peer(auth=("user@local.test", "s3cret"), auth_mechanisms=("LOGIN",))
        d = self.start(tls="required", auth=("user@local.test", "s3cret"))
        self.serve(peer)
        self.assertEqual(len(self.successResultOf(d).delivered), 3)
        self.assertEqual(peer.sessions[0].auth_identity, "user@local.test")
        self.assertEqual(peer.sessions[0].commands[3], b"AUTH LOGIN")

    def test_auth_refused(self) -> None:
        """
        Wrong credentials (535) are our problem, not the message's: every
        recipient fails temporarily (4.7.8, retried later) with the
        server's reply, and the host failure is logged with it.
        """
        events = []
        self.patch(client.log, "observer", events.append)
        peer = self.peer(auth=("user@local.test", "s3cret"))
        d = self.start(tls="required", auth=("user@local.test", "wrong"))
        self.serve(peer)
        outcome = self.successResultOf(d)
        self.assertEqual(set(self.statuses(outcome).values()), {("temporary", "4.7.8")})
        reply = "mx1.test refused AUTH: 535 5.7.8 Authentication credentials invalid"
        self.assertEqual([r.reply for r in outcome.results], [reply] * 3)
        self.assertTrue(outcome.results[0].remote)
        self.assertIsNone(peer.sessions[0].auth_identity)
        self.assertEqual(peer.sessions[0].commands[-1], b"QUIT")
        self.assertEqual(
            [formatEvent(e) for e in events],
            [f"qid=Q1 relay=mx1.test[192.0.2.1]:25 status=host-failed dsn=4.7.8 reason={reply!r}"],
        )


# Reactor turns to wait for a closed connection to leave the reactor.
MAX_TURNS = 1000


def _connections() -> list:
    """
    The TCP connections (either end) the reactor still watches.
    """
    return [s for s in set(reactor.getReaders()) | set(reactor.getWriters()) if isinstance(s, tcp.Connection)]


class _WatchedPeer(testing.FakeSMTPPeer):
    """
    A L{testing.FakeSMTPPeer} whose C{closed} fires when its (one)
    connection is closed.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.closed = defer.Deferred()

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        lost = protocol.connectionLost

        def connectionLost(reason) -> None:
            lost(reason)
            self.closed.callback(None)

        protocol.connectionLost = connectionLost
        return protocol


class RealConnectionLogTests(TestCase):
    """
    A delivery over a real TCP connection on 127.0.0.1, on the real reactor,
    with every log event captured.
    """

    @defer.inlineCallbacks
    def test_connection_logs_nothing(self) -> None:
        """
        A successful delivery logs nothing, Twisted's "Starting factory" and
        "Stopping factory" for the connection included: the relay logs its
        own one-line event per recipient.
        """
        peer = _WatchedPeer()
        peer.noisy = False
        port = reactor.listenTCP(0, peer, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "body")
        with open(path, "wb") as f:
            f.write(BODY)
        message = OutboundMessage("alice@local.test", ("one@remote.test",), path, len(BODY), queue_id="Q1")
        host = RouteHost("mx1.test", ("127.0.0.1",), port.getHost().port)
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            outcome = yield deliver(reactor, [host], message, ClientOptions("client.test", tls="none"))
            yield peer.closed
            # The peer closes first (after its 221); the client's side, and
            # with it the factory, stops when the reactor has dropped its
            # socket.
            for _ in range(MAX_TURNS):
                if not _connections():
                    break
                yield task.deferLater(reactor, 0, lambda: None)
            self.assertEqual(_connections(), [])
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.assertEqual(self.statuses(outcome), {"one@remote.test": ("delivered", "2.0.0")})
        self.assertEqual(peer.sessions[0].messages, [BODY])
        self.assertEqual([formatEvent(e) for e in events], [])

    def statuses(self, outcome) -> dict[str, tuple[str, str]]:
        return {r.recipient: (r.status, r.enhanced_status) for r in outcome.results}


class TLSHelperTests(SynchronousTestCase):
    """
    L{mailappliance.smtp.client_tls}.
    """

    def test_host_names(self) -> None:
        """
        Address literals become bare addresses; a trailing dot goes.
        """
        self.assertEqual(tls_host_name("mx.example.test."), "mx.example.test")
        self.assertEqual(tls_host_name("[192.0.2.1]"), "192.0.2.1")
        self.assertEqual(tls_host_name("[IPv6:2001:db8::1]"), "2001:db8::1")

    def test_creator_choice(self) -> None:
        """
        Unverified gives L{UnverifiedClientTLS}, which sends no SNI for an
        address.
        """
        self.assertIsInstance(client_tls_creator("mx.test", False), UnverifiedClientTLS)
        self.assertIsNone(UnverifiedClientTLS("[192.0.2.1]")._server_name)
        self.assertEqual(UnverifiedClientTLS("mx.test")._server_name, b"mx.test")
        self.assertIsInstance(client_tls_creator("mx.test", True), VerifiedClientTLS)

    def test_bad_tls_option(self) -> None:
        """
        An unknown C{tls} value is refused.
        """
        self.assertRaises(ValueError, ClientOptions, "client.test", tls="maybe")


def _restore_environ(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
