# -*- test-case-name: tests.test_smtp_client_session -*-
"""
Tests for L{mailappliance.smtp.client_session}: the dialogue with one
server, as send/expect tables over a L{StringTransport}.

In a script, C{("S", bytes)} is what the server sends and C{("C", bytes)}
what the client must have written since the last step (all of it, exactly);
C{("C1", bytes)} also requires it to have been a single write.
"""

from __future__ import annotations

import base64
import os

from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailappliance.disk import SynchronousDiskPool
from mailappliance.smtp.client import ClientOptions, OutboundMessage
from mailappliance.smtp.client_protocol import Reply, SMTPClientChannel
from mailappliance.smtp.client_session import (
    Session,
    Timeouts,
    parse_extensions,
    size_limit,
)

BODY = b"Subject: test\r\n\r\n.leading dot\r\n.\r\nend\r\n"
STUFFED = b"Subject: test\r\n\r\n..leading dot\r\n..\r\nend\r\n.\r\n"
GREETING = b"220 mx.test ESMTP\r\n"
EHLO_PIPELINING = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
EHLO_PLAIN = b"250-mx.test\r\n250 8BITMIME\r\n"


@implementer(ITLSTransport)
class RecordingTransport(StringTransport):
    """
    A L{StringTransport} that keeps each write apart and records
    C{startTLS} (without doing TLS).
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.tls_creators: list = []
        self.nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def write(self, data: bytes) -> None:
        super().write(data)
        self.writes.append(data)

    def startTLS(self, creator) -> None:
        self.tls_creators.append(creator)


class DialogueMixin:
    """
    Runs a L{Session} against a script.
    """

    recipients = ("one@remote.test", "two@remote.test")

    def make_directory(self) -> str:
        """
        A new empty directory under the test's temporary tree.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def make_session(self, body=BODY, options=None, use_tls=False, recipients=None, **message):
        directory = self.make_directory()
        path = os.path.join(directory, "body")
        with open(path, "wb") as f:
            f.write(body)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        fields = {"sender": "alice@local.test", "size": len(body)}
        fields.update(message)
        self.message = OutboundMessage(
            recipients=tuple(recipients or self.recipients), body_path=path, **fields
        )
        options = options or ClientOptions("client.test", tls="none")
        self.clock = Clock()
        self.transport = RecordingTransport()
        self.channel = SMTPClientChannel(self.clock)
        self.channel.makeConnection(self.transport)
        session = Session(
            self.channel,
            "mx.test",
            self.message,
            self.message.recipients,
            options,
            use_tls,
            Timeouts(),
            SynchronousDiskPool(),
            fd,
            self.clock,
        )
        return session.run()

    def play(self, script) -> None:
        for step, data in script:
            if step == "S":
                self.channel.dataReceived(data)
                continue
            written = b"".join(self.transport.writes)
            self.assertEqual(written, data)
            if step == "C1":
                self.assertEqual(len(self.transport.writes), 1, self.transport.writes)
            del self.transport.writes[:]

    def dialogue(self, script, **kwargs):
        """
        Run a session through C{script}; it must have finished then.

        @return: the L{SessionResult}.
        """
        d = self.make_session(**kwargs)
        self.play(script)
        self.assertEqual(self.transport.writes, [])
        return self.successResultOf(d)

    def assertResults(self, result, expected) -> None:
        """
        C{expected} maps recipient to (status, reply, enhanced status).
        """
        got = {r: (v.status, v.reply, v.enhanced_status) for r, v in result.decided.items()}
        self.assertEqual(got, expected)


class ReplyTests(SynchronousTestCase):
    """
    L{Reply} and the EHLO helpers.
    """

    def test_enhanced_status(self) -> None:
        """
        The enhanced code is taken from the first line when its class agrees
        with the reply code; otherwise the class's C{X.0.0} is used.
        """
        self.assertEqual(Reply(550, ("5.1.1 no such user",)).status_or(), "5.1.1")
        self.assertEqual(Reply(550, ("4.1.1 inconsistent",)).status_or(), "5.0.0")
        self.assertEqual(Reply(451, ("try later",)).status_or(), "4.0.0")
        self.assertEqual(Reply(451, ("try later",)).status_or("4.4.2"), "4.4.2")
        self.assertEqual(Reply(250, ("2.0.0x",)).enhanced_status, None)

    def test_str_joins_lines(self) -> None:
        """
        A multi-line reply reads as one line.
        """
        self.assertEqual(str(Reply(550, ("5.7.1 first", "5.7.1 second"))), "550 5.7.1 first 5.7.1 second")
        self.assertEqual(str(Reply(250, ("",))), "250")

    def test_parse_extensions(self) -> None:
        """
        Keywords are upper-cased with their parameters; the greeting line is
        skipped; C{AUTH=} merges into C{AUTH}.
        """
        reply = Reply(250, ("mx.test hello", "size 1000", "pipelining", "AUTH PLAIN", "AUTH=LOGIN"))
        self.assertEqual(
            parse_extensions(reply), {"SIZE": ("1000",), "PIPELINING": (), "AUTH": ("PLAIN", "LOGIN")}
        )

    def test_size_limit(self) -> None:
        """
        C{SIZE 0}, C{SIZE} alone and junk mean no limit.
        """
        self.assertEqual(size_limit({"SIZE": ("1000",)}), 1000)
        self.assertIsNone(size_limit({"SIZE": ("0",)}))
        self.assertIsNone(size_limit({"SIZE": ()}))
        self.assertIsNone(size_limit({"SIZE": ("x",)}))
        self.assertIsNone(size_limit({}))


class TransactionTests(DialogueMixin, SynchronousTestCase):
    """
    MAIL, RCPT, DATA, pipelined and lock-step.
    """

    def test_pipelined_accept_all(self) -> None:
        """
        With PIPELINING, MAIL (with SIZE=), both RCPTs and DATA go in one
        write; the replies, arriving together, are matched in order; the
        body is sent dot-stuffed; then QUIT.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PIPELINING),
                (
                    "C1",
                    b"MAIL FROM:<alice@local.test> SIZE=%d\r\n"
                    b"RCPT TO:<one@remote.test>\r\nRCPT TO:<two@remote.test>\r\nDATA\r\n" % len(BODY),
                ),
                ("S", b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n"),
                ("C", STUFFED),
                ("S", b"250 2.0.0 queued as X\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 2.0.0 bye\r\n"),
            ]
        )
        self.assertResults(
            result,
            {
                "one@remote.test": ("delivered", "250 2.0.0 queued as X", "2.0.0"),
                "two@remote.test": ("delivered", "250 2.0.0 queued as X", "2.0.0"),
            },
        )
        self.assertIsNone(result.problem)
        self.assertTrue(self.transport.disconnecting)

    def test_pipelined_replies_in_order(self) -> None:
        """
        Replies split across reads at odd places still go to the command
        they answer: the second recipient's 550 is not taken for the
        first's.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PIPELINING),
                (
                    "C1",
                    b"MAIL FROM:<alice@local.test> SIZE=%d\r\n"
                    b"RCPT TO:<one@remote.test>\r\nRCPT TO:<two@remote.test>\r\nDATA\r\n" % len(BODY),
                ),
                ("S", b"250 ok\r\n25"),
                ("S", b"0 2.1.5 ok\r\n550-5.1.1 no\r\n550 5.1.1 such user\r"),
                ("S", b"\n354 go\r\n"),
                ("C", STUFFED),
                ("S", b"250 2.0.0 ok\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ]
        )
        self.assertResults(
            result,
            {
                "one@remote.test": ("delivered", "250 2.0.0 ok", "2.0.0"),
                "two@remote.test": ("permanent", "550 5.1.1 no 5.1.1 such user", "5.1.1"),
            },
        )

    def test_rcpt_out_of_step(self) -> None:
        """
        A 3xx reply to RCPT (a peer out of step: one reply missing from a
        pipelined batch, so that DATA's 354 answers the last RCPT) is a
        protocol error: no data is sent, nobody counts as delivered, and
        the connection is dropped.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PIPELINING),
                (
                    "C1",
                    b"MAIL FROM:<alice@local.test> SIZE=%d\r\n"
                    b"RCPT TO:<one@remote.test>\r\nRCPT TO:<two@remote.test>\r\nDATA\r\n" % len(BODY),
                ),
                ("S", b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n503 5.5.1 no recipients\r\n"),
            ]
        )
        self.assertResults(result, {})
        self.assertEqual(result.problem.status, "4.5.0")
        self.assertIn("unexpected reply to RCPT: 354 go ahead", result.problem.reason)
        self.assertNotIn(b"Subject", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_rcpt_552_is_temporary(self) -> None:
        """
        A 552 to RCPT is an old "too many recipients" (RFC 5321 section
        4.5.3.1.10): temporary, 4.5.3, while the others are delivered.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PIPELINING),
                (
                    "C1",
                    b"MAIL FROM:<alice@local.test> SIZE=%d\r\n"
                    b"RCPT TO:<one@remote.test>\r\nRCPT TO:<two@remote.test>\r\nDATA\r\n" % len(BODY),
                ),
                ("S", b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n552 too many recipients\r\n354 go\r\n"),
                ("C", STUFFED),
                ("S", b"250 2.0.0 ok\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ]
        )
        self.assertResults(
            result,
            {
                "one@remote.test": ("delivered", "250 2.0.0 ok", "2.0.0"),
                "two@remote.test": ("temporary", "552 too many recipients", "4.5.3"),
            },
        )

    def test_lock_step_without_pipelining(self) -> None:
        """
        Without PIPELINING each command waits for the previous reply; a
        deferred recipient is a temporary failure, the other delivered.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"RCPT TO:<one@remote.test>\r\n"),
                ("S", b"450 4.2.1 busy\r\n"),
                ("C", b"RCPT TO:<two@remote.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"DATA\r\n"),
                ("S", b"354 go\r\n"),
                ("C", STUFFED),
                ("S", b"250 ok\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ]
        )
        self.assertResults(
            result,
            {
                "one@remote.test": ("temporary", "450 4.2.1 busy", "4.2.1"),
                "two@remote.test": ("delivered", "250 ok", "2.0.0"),
            },
        )

    def test_helo_fallback(self) -> None:
        """
        A 5xx to EHLO makes the client say HELO and use no extensions.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"502 5.5.1 what\r\n"),
                ("C", b"HELO client.test\r\n"),
                ("S", b"250 mx.test\r\n"),
                ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"RCPT TO:<one@remote.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"DATA\r\n"),
                ("S", b"354 go\r\n"),
                ("C", STUFFED),
                ("S", b"250 ok\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            recipients=["one@remote.test"],
        )
        self.assertEqual(result.decided["one@remote.test"].status, "delivered")

    def test_mail_5xx_is_permanent_for_all(self) -> None:
        """
        A 5xx to MAIL fails every recipient permanently; no RCPT is sent.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                ("S", b"553 5.7.1 sender refused\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ]
        )
        expected = ("permanent", "553 5.7.1 sender refused", "5.7.1")
        self.assertResults(result, {"one@remote.test": expected, "two@remote.test": expected})
        self.assertIsNone(result.problem)

    def test_mail_4xx_fails_the_host(self) -> None:
        """
        A 4xx to MAIL decides nothing: the host failed (the next one may do
        better), with the reply as the problem.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                ("S", b"451 4.3.0 local trouble\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ]
        )
        self.assertEqual(result.decided, {})
        self.assertEqual(result.problem.reason, "mx.test refused MAIL: 451 4.3.0 local trouble")
        self.assertEqual(result.problem.status, "4.3.0")

    def test_pipelined_nothing_accepted_but_354(self) -> None:
        """
        If a server answers a pipelined DATA with 354 although it refused
        every recipient, the client ends the empty data with a lone dot
        (RFC 2920 section 3.1) and quits.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PIPELINING),
                (
                    "C1",
                    b"MAIL FROM:<alice@local.test> SIZE=%d\r\n"
                    b"RCPT TO:<one@remote.test>\r\nRCPT TO:<two@remote.test>\r\nDATA\r\n" % len(BODY),
                ),
                ("S", b"250 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n354 go\r\n"),
                ("C", b".\r\n"),
                ("S", b"554 5.5.1 no recipients\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ]
        )
        self.assertEqual({r.status for r in result.decided.values()}, {"permanent"})

    def test_pipelined_mail_refused(self) -> None:
        """
        A pipelined MAIL refused with 5xx decides all recipients; the 503s
        to the RCPTs do not count.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PIPELINING),
                ("C1", b"MAIL FROM:<alice@local.test> SIZE=%d\r\n" b"RCPT TO:<one@remote.test>\r\nDATA\r\n" % len(BODY)),
                ("S", b"550 5.7.1 go away\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            recipients=["one@remote.test"],
        )
        self.assertResults(result, {"one@remote.test": ("permanent", "550 5.7.1 go away", "5.7.1")})

    def test_data_refused(self) -> None:
        """
        A 5xx to DATA fails the accepted recipients permanently, a 4xx
        temporarily; a refused RCPT keeps its own reply.
        """
        for reply, status in [(b"554 5.3.0 no data today", "permanent"), (b"451 4.3.0 later", "temporary")]:
            result = self.dialogue(
                [
                    ("S", GREETING),
                    ("C", b"EHLO client.test\r\n"),
                    ("S", EHLO_PLAIN),
                    ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                    ("S", b"250 ok\r\n"),
                    ("C", b"RCPT TO:<one@remote.test>\r\n"),
                    ("S", b"550 5.1.1 no\r\n"),
                    ("C", b"RCPT TO:<two@remote.test>\r\n"),
                    ("S", b"250 ok\r\n"),
                    ("C", b"DATA\r\n"),
                    ("S", reply + b"\r\n"),
                    ("C", b"QUIT\r\n"),
                    ("S", b"221 bye\r\n"),
                ]
            )
            self.assertEqual(result.decided["one@remote.test"].reply, "550 5.1.1 no")
            self.assertEqual(result.decided["two@remote.test"].status, status)
            self.assertEqual(result.decided["two@remote.test"].reply, reply.decode())

    def test_final_reply_applies_to_accepted(self) -> None:
        """
        A 4xx after the final dot is a temporary failure for every accepted
        recipient.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PIPELINING),
                (
                    "C1",
                    b"MAIL FROM:<alice@local.test> SIZE=%d\r\n"
                    b"RCPT TO:<one@remote.test>\r\nRCPT TO:<two@remote.test>\r\nDATA\r\n" % len(BODY),
                ),
                ("S", b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                ("C", STUFFED),
                ("S", b"452 4.3.1 disk full\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ]
        )
        expected = ("temporary", "452 4.3.1 disk full", "4.3.1")
        self.assertResults(result, {"one@remote.test": expected, "two@remote.test": expected})

    def test_body_without_final_crlf(self) -> None:
        """
        A body that does not end with CRLF gets one before the dot.
        """
        self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"MAIL FROM:<>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"RCPT TO:<one@remote.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"DATA\r\n"),
                ("S", b"354 go\r\n"),
                ("C", b"partial\r\n.\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            body=b"partial",
            sender="",
            recipients=["one@remote.test"],
        )

    def test_greeting_refused(self) -> None:
        """
        A 554 greeting fails the host (temporarily, so the next host is
        tried); the client still says QUIT.
        """
        result = self.dialogue(
            [("S", b"554 5.3.2 no service\r\n"), ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n")]
        )
        self.assertEqual(result.decided, {})
        self.assertEqual(result.problem.reason, "mx.test greeted with: 554 5.3.2 no service")
        self.assertEqual(result.problem.status, "4.3.2")


class ExtensionTests(DialogueMixin, SynchronousTestCase):
    """
    SIZE, 8BITMIME, SMTPUTF8.
    """

    def test_size_too_small(self) -> None:
        """
        A message larger than the announced SIZE fails permanently (5.3.4)
        without MAIL.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"250-mx.test\r\n250 SIZE 10\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ]
        )
        why = f"message size {len(BODY)} exceeds the limit of 10 announced by mx.test"
        expected = ("permanent", why, "5.3.4")
        self.assertResults(result, {"one@remote.test": expected, "two@remote.test": expected})

    def test_eight_bit_to_seven_bit_server(self) -> None:
        """
        An 8-bit message to a server without 8BITMIME fails permanently
        (5.6.3); it is not converted.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"250-mx.test\r\n250 PIPELINING\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            eight_bit=True,
        )
        self.assertEqual({r.enhanced_status for r in result.decided.values()}, {"5.6.3"})
        self.assertEqual({r.status for r in result.decided.values()}, {"permanent"})

    def test_smtputf8_not_offered(self) -> None:
        """
        A message that needs SMTPUTF8 to a server without it fails
        permanently (5.6.7).
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            smtputf8=True,
        )
        self.assertEqual({r.enhanced_status for r in result.decided.values()}, {"5.6.7"})

    def test_mail_parameters(self) -> None:
        """
        MAIL carries SIZE=, BODY=8BITMIME and SMTPUTF8 when they apply;
        UTF-8 addresses go out as UTF-8.
        """
        body = "Subject: caf\u00e9\r\n\r\n\u00e9\r\n".encode("utf-8")
        self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"250-mx.test\r\n250-SIZE 0\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"),
                (
                    "C",
                    "MAIL FROM:<j\u00f6rg@local.test> SIZE=%d BODY=8BITMIME SMTPUTF8\r\n".encode("utf-8")
                    % len(body),
                ),
                ("S", b"250 ok\r\n"),
                ("C", "RCPT TO:<\u00fc@remote.test>\r\n".encode("utf-8")),
                ("S", b"250 ok\r\n"),
                ("C", b"DATA\r\n"),
                ("S", b"354 go\r\n"),
                ("C", body + b".\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            body=body,
            sender="j\u00f6rg@local.test",
            recipients=["\u00fc@remote.test"],
            eight_bit=True,
            smtputf8=True,
        )


    def test_quoted_addresses(self) -> None:
        """
        Quoted local parts go out exactly as queued, quotes and escapes
        included, in MAIL FROM and RCPT TO (RFC 5321 section 4.1.2).
        """
        self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PIPELINING),
                (
                    "C1",
                    b'MAIL FROM:<"jane roe"@local.test> SIZE=%d\r\n'
                    b'RCPT TO:<"john doe"@remote.test>\r\n'
                    b'RCPT TO:<"a\\"b"@remote.test>\r\nDATA\r\n' % len(BODY),
                ),
                ("S", b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                ("C", STUFFED),
                ("S", b"250 ok\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            sender='"jane roe"@local.test',
            recipients=['"john doe"@remote.test', '"a\\"b"@remote.test'],
        )

class StartTLSTests(DialogueMixin, SynchronousTestCase):
    """
    STARTTLS on the wire (the handshake itself is tested in
    L{tests.test_smtp_client}).
    """

    def test_injected_reply_discarded(self) -> None:
        """
        A line sent in the same segment after the 220 to STARTTLS is not
        read as the reply to the EHLO sent over TLS (CVE-2011-0411 class):
        after C{220 go ahead\\r\\n250 injected\\r\\n} the client waits for the
        real reply.
        """
        d = self.make_session(options=ClientOptions("client.test", tls="required"), use_tls=True)
        self.play(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"250-mx.test\r\n250 STARTTLS\r\n"),
                ("C", b"STARTTLS\r\n"),
                ("S", b"220 go ahead\r\n250 injected\r\n"),
                ("C", b"EHLO client.test\r\n"),
            ]
        )
        self.assertEqual(len(self.transport.tls_creators), 1)
        self.assertNoResult(d)
        self.play(
            [
                ("S", b"250-mx.test\r\n250 PIPELINING\r\n"),
                ("C", b"MAIL FROM:<alice@local.test>\r\nRCPT TO:<one@remote.test>\r\nRCPT TO:<two@remote.test>\r\nDATA\r\n"),
            ]
        )

    def test_required_but_not_offered(self) -> None:
        """
        tls="required" and no STARTTLS: the host fails temporarily (4.7.5)
        after a polite QUIT.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            options=ClientOptions("client.test", tls="required"),
            use_tls=True,
        )
        self.assertEqual(result.problem.status, "4.7.5")
        self.assertEqual(result.problem.reason, "TLS is required but mx.test does not offer STARTTLS")
        self.assertEqual(result.decided, {})

    def test_refused_starttls(self) -> None:
        """
        A 454 to STARTTLS fails the host when TLS is required; when it is
        opportunistic the session goes on in the clear.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"250-mx.test\r\n250 STARTTLS\r\n"),
                ("C", b"STARTTLS\r\n"),
                ("S", b"454 4.7.0 TLS not available\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            options=ClientOptions("client.test", tls="required"),
            use_tls=True,
        )
        self.assertEqual(result.problem.status, "4.7.5")
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"250-mx.test\r\n250 STARTTLS\r\n"),
                ("C", b"STARTTLS\r\n"),
                ("S", b"454 4.7.0 TLS not available\r\n"),
                ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"RCPT TO:<one@remote.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"DATA\r\n"),
                ("S", b"354 go\r\n"),
                ("C", STUFFED),
                ("S", b"250 ok\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            options=ClientOptions("client.test", tls="opportunistic"),
            use_tls=True,
            recipients=["one@remote.test"],
        )
        self.assertEqual(result.decided["one@remote.test"].status, "delivered")
        self.assertFalse(result.tls)

    def test_handshake_failure(self) -> None:
        """
        The connection lost during the handshake is a TLS failure (4.7.5).
        """
        d = self.make_session(options=ClientOptions("client.test", tls="required"), use_tls=True)
        self.play(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"250-mx.test\r\n250 STARTTLS\r\n"),
                ("C", b"STARTTLS\r\n"),
                ("S", b"220 go ahead\r\n"),
                ("C", b"EHLO client.test\r\n"),
            ]
        )
        self.channel.connectionLost(Failure(Exception("certificate verify failed")))
        result = self.successResultOf(d)
        self.assertTrue(result.problem.tls_failure)
        self.assertEqual(result.problem.status, "4.7.5")
        self.assertEqual(result.problem.reason, "TLS handshake failed: Exception: certificate verify failed")


class AuthTests(DialogueMixin, SynchronousTestCase):
    """
    AUTH PLAIN and LOGIN (RFC 4954).
    """

    def auth_script(self, auth_lines, mechanisms=b"PLAIN LOGIN"):
        return [
            ("S", GREETING),
            ("C", b"EHLO client.test\r\n"),
            ("S", b"250-mx.test\r\n250 AUTH " + mechanisms + b"\r\n"),
            *auth_lines,
        ]

    def test_plain(self) -> None:
        """
        PLAIN sends the initial response in the AUTH command.
        """
        response = base64.b64encode(b"\0user@local.test\0s3cret")
        result = self.dialogue(
            self.auth_script(
                [
                    ("C", b"AUTH PLAIN " + response + b"\r\n"),
                    ("S", b"235 2.7.0 ok\r\n"),
                    ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                    ("S", b"250 ok\r\n"),
                    ("C", b"RCPT TO:<one@remote.test>\r\n"),
                    ("S", b"250 ok\r\n"),
                    ("C", b"DATA\r\n"),
                    ("S", b"354 go\r\n"),
                    ("C", STUFFED),
                    ("S", b"250 ok\r\n"),
                    ("C", b"QUIT\r\n"),
                    ("S", b"221 bye\r\n"),
                ]
            ),
            options=ClientOptions("client.test", tls="none", auth=("user@local.test", "s3cret")),
            recipients=["one@remote.test"],
        )
        self.assertEqual(result.decided["one@remote.test"].status, "delivered")

    def test_login(self) -> None:
        """
        LOGIN, when PLAIN is not offered: user name and password each
        answer a 334.
        """
        self.dialogue(
            self.auth_script(
                [
                    ("C", b"AUTH LOGIN\r\n"),
                    ("S", b"334 VXNlcm5hbWU6\r\n"),
                    ("C", base64.b64encode(b"user@local.test") + b"\r\n"),
                    ("S", b"334 UGFzc3dvcmQ6\r\n"),
                    ("C", base64.b64encode(b"s3cret") + b"\r\n"),
                    ("S", b"235 2.7.0 ok\r\n"),
                    ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                    ("S", b"421 4.3.2 shutting down\r\n"),
                    ("C", b"QUIT\r\n"),
                    ("S", b"221 bye\r\n"),
                ],
                mechanisms=b"LOGIN CRAM-MD5",
            ),
            options=ClientOptions("client.test", tls="none", auth=("user@local.test", "s3cret")),
        )

    def test_535_is_temporary(self) -> None:
        """
        535 (bad credentials) decides no recipient: it fails the host
        temporarily (4.7.8) with the server's reply, after a polite QUIT,
        so the mail is retried once the credentials are fixed.
        """
        result = self.dialogue(
            self.auth_script(
                [
                    ("C", b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n"),
                    ("S", b"535 5.7.8 bad credentials\r\n"),
                    ("C", b"QUIT\r\n"),
                    ("S", b"221 bye\r\n"),
                ]
            ),
            options=ClientOptions("client.test", tls="none", auth=("u", "p")),
        )
        self.assertEqual(result.decided, {})
        self.assertEqual(result.problem.status, "4.7.8")
        self.assertEqual(result.problem.reason, "mx.test refused AUTH: 535 5.7.8 bad credentials")
        self.assertTrue(result.problem.retry_elsewhere)

    def test_other_5xx_is_temporary(self) -> None:
        """
        Any other 5xx to AUTH (here 534, mechanism too weak) fails the host
        temporarily too, with the class made 4.
        """
        result = self.dialogue(
            self.auth_script(
                [
                    ("C", b"AUTH LOGIN\r\n"),
                    ("S", b"534 5.7.9 Authentication mechanism is too weak\r\n"),
                    ("C", b"QUIT\r\n"),
                    ("S", b"221 bye\r\n"),
                ],
                mechanisms=b"LOGIN",
            ),
            options=ClientOptions("client.test", tls="none", auth=("u", "p")),
        )
        self.assertEqual(result.decided, {})
        self.assertEqual(result.problem.status, "4.7.9")
        self.assertEqual(result.problem.reason, "mx.test refused AUTH: 534 5.7.9 Authentication mechanism is too weak")

    def test_other_failure_is_temporary(self) -> None:
        """
        Any other AUTH failure fails the host temporarily.
        """
        result = self.dialogue(
            self.auth_script(
                [
                    ("C", b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n"),
                    ("S", b"454 4.7.0 temporary auth failure\r\n"),
                    ("C", b"QUIT\r\n"),
                    ("S", b"221 bye\r\n"),
                ]
            ),
            options=ClientOptions("client.test", tls="none", auth=("u", "p")),
        )
        self.assertEqual(result.decided, {})
        self.assertEqual(result.problem.status, "4.7.0")

    def test_no_credentials_in_the_clear(self) -> None:
        """
        Unless tls="none", credentials are never sent without TLS.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"250-mx.test\r\n250 AUTH PLAIN\r\n"),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            options=ClientOptions("client.test", tls="opportunistic", auth=("u", "p")),
            use_tls=True,
        )
        self.assertEqual(result.problem.reason, "not sending credentials to mx.test without TLS")

    def test_auth_not_offered(self) -> None:
        """
        A server that does not offer AUTH when we must authenticate fails
        temporarily: sending unauthenticated would likely bounce.
        """
        result = self.dialogue(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"QUIT\r\n"),
                ("S", b"221 bye\r\n"),
            ],
            options=ClientOptions("client.test", tls="none", auth=("u", "p")),
        )
        self.assertEqual(result.problem.reason, "mx.test does not offer AUTH")


class TimeoutTests(DialogueMixin, SynchronousTestCase):
    """
    Every wait of RFC 5321 section 4.5.3.2 has its time-out; when it
    expires the connection is aborted and the host failed.
    """

    def run_until_waiting(self, script):
        d = self.make_session(recipients=["one@remote.test"])
        self.play(script)
        return d

    def assertTimesOut(self, d, seconds, what) -> None:
        self.clock.advance(seconds - 0.5)
        self.assertNoResult(d)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.5)
        result = self.successResultOf(d)
        self.assertEqual(result.problem.reason, f"timed out after {seconds}s waiting for {what}")
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(result.decided, {})

    def test_greeting(self) -> None:
        """
        5 minutes for the greeting.
        """
        d = self.run_until_waiting([])
        self.assertTimesOut(d, 300, "greeting")

    def test_ehlo(self) -> None:
        """
        5 minutes for the reply to EHLO.
        """
        d = self.run_until_waiting([("S", GREETING), ("C", b"EHLO client.test\r\n")])
        self.assertTimesOut(d, 300, "reply to EHLO")

    def test_mail(self) -> None:
        """
        5 minutes for the reply to MAIL.
        """
        d = self.run_until_waiting(
            [("S", GREETING), ("C", b"EHLO client.test\r\n"), ("S", EHLO_PLAIN), ("C", b"MAIL FROM:<alice@local.test>\r\n")]
        )
        self.assertTimesOut(d, 300, "reply to MAIL")

    def test_rcpt(self) -> None:
        """
        5 minutes for the reply to RCPT.
        """
        d = self.run_until_waiting(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"RCPT TO:<one@remote.test>\r\n"),
            ]
        )
        self.assertTimesOut(d, 300, "reply to RCPT")

    def test_pipelined_rcpt_counts_from_previous_reply(self) -> None:
        """
        Pipelined, each reply's time-out runs from the previous reply: the
        RCPT reply may come 5 minutes after the MAIL reply.
        """
        d = self.run_until_waiting(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PIPELINING),
                ("C", b"MAIL FROM:<alice@local.test> SIZE=%d\r\nRCPT TO:<one@remote.test>\r\nDATA\r\n" % len(BODY)),
            ]
        )
        self.clock.advance(200)
        self.channel.dataReceived(b"250 ok\r\n")
        self.assertTimesOut(d, 300, "reply to RCPT")

    def test_data_initiation(self) -> None:
        """
        2 minutes for the 354.
        """
        d = self.run_until_waiting(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"RCPT TO:<one@remote.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"DATA\r\n"),
            ]
        )
        self.assertTimesOut(d, 120, "reply to DATA")

    def test_data_termination(self) -> None:
        """
        10 minutes for the reply after the final dot.
        """
        d = self.run_until_waiting(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"RCPT TO:<one@remote.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"DATA\r\n"),
                ("S", b"354 go\r\n"),
                ("C", STUFFED),
            ]
        )
        self.assertTimesOut(d, 600, "reply to end of data")

    def test_data_block(self) -> None:
        """
        3 minutes for the network to take each block: a transport that
        pauses the body producer and never resumes it fails the session.
        """

        class PausingTransport(RecordingTransport):
            def registerProducer(self, producer, streaming):
                super().registerProducer(producer, streaming)
                producer.pauseProducing()

        d = self.make_session(recipients=["one@remote.test"])
        self.transport.__class__ = PausingTransport
        self.play(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", EHLO_PLAIN),
                ("C", b"MAIL FROM:<alice@local.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"RCPT TO:<one@remote.test>\r\n"),
                ("S", b"250 ok\r\n"),
                ("C", b"DATA\r\n"),
                ("S", b"354 go\r\n"),
                ("C", b""),
            ]
        )
        self.clock.advance(179)
        self.assertNoResult(d)
        self.clock.advance(1)
        result = self.successResultOf(d)
        self.assertEqual(result.problem.reason, "timed out after 180s sending the message")
        self.assertTrue(self.transport.disconnected)

    def test_quit(self) -> None:
        """
        No reply to QUIT: the results stand; the connection is aborted
        after a minute.
        """
        d = self.run_until_waiting(
            [
                ("S", GREETING),
                ("C", b"EHLO client.test\r\n"),
                ("S", b"250-mx.test\r\n250 SIZE 1\r\n"),
                ("C", b"QUIT\r\n"),
            ]
        )
        self.clock.advance(60)
        result = self.successResultOf(d)
        self.assertEqual(result.decided["one@remote.test"].enhanced_status, "5.3.4")
        self.assertIsNone(result.problem)
        self.assertTrue(self.transport.disconnected)
