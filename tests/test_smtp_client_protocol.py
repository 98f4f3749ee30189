# -*- test-case-name: tests.test_smtp_client_protocol -*-
"""
Tests for L{mailappliance.smtp.client_protocol}.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.smtp.client_protocol import (
    MAX_REPLY_LINE_LENGTH,
    ConnectionProblem,
    Reply,
    SMTPClientChannel,
)
from tests.test_smtp_client_session import RecordingTransport


class ChannelTests(SynchronousTestCase):
    """
    L{SMTPClientChannel} reads replies and hands them out in order.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = RecordingTransport()
        self.channel = SMTPClientChannel(self.clock)
        self.channel.makeConnection(self.transport)

    def test_no_delay(self) -> None:
        """
        TCP_NODELAY is set on connecting.
        """
        self.assertTrue(self.transport.nodelay)

    def test_multi_line_reply(self) -> None:
        """
        Continuation lines make one reply; bare LF line ends are accepted.
        """
        d = self.channel.expect(10, "greeting")
        self.channel.dataReceived(b"220-mx.test\n220-second\r\n220 last\r\n")
        self.assertEqual(self.successResultOf(d), Reply(220, ("mx.test", "second", "last")))

    def test_code_only(self) -> None:
        """
        A reply of just a code is a reply with an empty text.
        """
        d = self.channel.expect(10, "reply")
        self.channel.dataReceived(b"250\r\n")
        self.assertEqual(self.successResultOf(d), Reply(250, ("",)))

    def test_early_replies_kept(self) -> None:
        """
        Replies that arrive before anyone waits are kept, in order.
        """
        self.channel.dataReceived(b"250 one\r\n251 two\r\n")
        first = self.channel.expect(10, "first")
        second = self.channel.expect(10, "second")
        self.assertEqual(self.successResultOf(first).code, 250)
        self.assertEqual(self.successResultOf(second).code, 251)

    def test_send_is_one_write(self) -> None:
        """
        L{SMTPClientChannel.send} writes all commands at once with CRLFs.
        """
        self.channel.send(b"MAIL FROM:<>", b"RCPT TO:<a@b>", b"DATA")
        self.assertEqual(self.transport.writes, [b"MAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n"])

    def test_not_a_reply(self) -> None:
        """
        A line that is not a reply ends the session: the wait fails and the
        connection is aborted.
        """
        d = self.channel.expect(10, "greeting")
        self.channel.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
        problem = self.failureResultOf(d, ConnectionProblem).value
        self.assertEqual(problem.reason, "protocol error: not an SMTP reply: b'HTTP/1.1 400 Bad Request'")
        self.assertEqual(problem.status, "4.5.0")
        self.assertTrue(self.transport.disconnected)

    def test_line_too_long(self) -> None:
        """
        A reply line longer than the limit, even without its line end, is a
        protocol error.
        """
        d = self.channel.expect(10, "greeting")
        self.channel.dataReceived(b"220 " + b"x" * MAX_REPLY_LINE_LENGTH)
        self.assertEqual(
            self.failureResultOf(d, ConnectionProblem).value.reason, "protocol error: reply line too long"
        )

    def test_lost_after_reply(self) -> None:
        """
        A reply that came before the connection was lost is handed out
        first; the next wait fails.
        """
        self.channel.dataReceived(b"421 4.3.2 closing\r\n")
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(self.channel.expect(10, "greeting")).code, 421)
        problem = self.failureResultOf(self.channel.expect(10, "reply"), ConnectionProblem).value
        self.assertTrue(problem.reason.startswith("connection lost: ConnectionDone"), problem.reason)
        self.assertEqual(problem.status, "4.4.2")
        self.assertFalse(problem.tls_failure)

    def test_pending_waits_fail_on_loss(self) -> None:
        """
        Every pending wait fails when the connection is lost, and its timer
        is cancelled.
        """
        waits = [self.channel.expect(10, "a"), self.channel.expect(10, "b")]
        self.channel.connectionLost(Failure(ConnectionDone()))
        for d in waits:
            self.failureResultOf(d, ConnectionProblem)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_then_late_reply(self) -> None:
        """
        After a time-out, a late reply is ignored and further waits fail.
        """
        d = self.channel.expect(5, "greeting")
        self.clock.advance(5)
        self.assertEqual(
            self.failureResultOf(d, ConnectionProblem).value.reason, "timed out after 5s waiting for greeting"
        )
        self.channel.dataReceived(b"220 late\r\n")
        self.failureResultOf(self.channel.expect(5, "reply"), ConnectionProblem)

    def test_tls_description_without_tls(self) -> None:
        """
        Without an established handshake there is no TLS to describe.
        """
        self.assertEqual(self.channel.tls_description(), (None, None))
