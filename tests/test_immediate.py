"""
Tests for L{mailappliance.immediate.write_now}, over real loopback TCP
connections (what it looks at is a real Twisted TCP transport's state).
"""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailappliance.immediate import write_now


class Writer(protocol.Protocol):
    """
    On connection, runs the test's C{action(transport)} and records what
    the transport still holds afterwards.
    """

    def connectionMade(self) -> None:
        self.factory.action(self.transport)
        self.factory.queued.callback(
            (bytes(self.transport.dataBuffer), list(self.transport._tempDataBuffer))
        )


class Reader(protocol.Protocol):
    def connectionMade(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.factory.expected:
            self.factory.done.callback(bytes(self.received))


class WriteNowTests(TestCase):
    @defer.inlineCallbacks
    def exchange(self, action, expected: bytes):
        """
        Run C{action} on the server side of a new loopback connection.

        @return: a L{Deferred} firing with (what the transport still held
            right after the action, the bytes the client received).
        """
        server = protocol.ServerFactory()
        server.protocol = Writer
        server.action = action
        server.queued = defer.Deferred()
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = protocol.ClientFactory()
        client.protocol = Reader
        client.expected = len(expected)
        client.done = defer.Deferred()
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, client)
        self.addCleanup(connector.disconnect)
        queued = yield server.queued
        received = yield client.done
        return queued, received

    @defer.inlineCallbacks
    def test_sent_at_once(self):
        """
        On an idle connection the bytes leave through the socket right
        away: nothing is left in the transport's buffers.
        """
        queued, received = yield self.exchange(lambda t: write_now(t, b"+OK hello\r\n"), b"+OK hello\r\n")
        self.assertEqual(queued, (b"", []))
        self.assertEqual(received, b"+OK hello\r\n")

    @defer.inlineCallbacks
    def test_queued_behind_pending_bytes(self):
        """
        When the transport already holds bytes, the new ones are queued
        behind them, so the order on the wire is kept.
        """

        def action(transport):
            transport.write(b"first ")
            write_now(transport, b"second\r\n")

        queued, received = yield self.exchange(action, b"first second\r\n")
        self.assertEqual(b"".join([queued[0], *queued[1]]), b"first second\r\n")
        self.assertEqual(received, b"first second\r\n")

    @defer.inlineCallbacks
    def test_large_write_rest_queued(self):
        """
        What the kernel does not take at once is queued and arrives after
        the rest, complete and in order.
        """
        data = bytes(range(256)) * 16384  # 4 MiB: more than a socket buffer
        queued, received = yield self.exchange(lambda t: write_now(t, data), data)
        held = len(queued[0]) + sum(len(b) for b in queued[1])
        self.assertTrue(0 < held < len(data), held)
        self.assertEqual(received, data)


class OtherTransportTests(SynchronousTestCase):
    def test_not_tcp(self):
        """
        Any other transport (TLS, test fakes) just gets C{write()}.
        """
        transport = StringTransport()
        write_now(transport, b"x\r\n")
        self.assertEqual(transport.value(), b"x\r\n")

    def test_empty(self):
        """
        Nothing to write: nothing written.
        """
        transport = StringTransport()
        write_now(transport, b"")
        self.assertEqual(transport.value(), b"")
