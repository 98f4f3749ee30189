"""
Tests for RETR and TOP in L{mailappliance.pop3.server}: small messages in
one write after one disk job, large ones streamed after their first
chunk, and the following messages read ahead in batches.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailappliance.pop3.mailbox import read_message_start, read_message_starts
from mailappliance.pop3.transfer import READ_CHUNK
from tests.test_pop3_server import (
    ALICE,
    LOGGED_IN,
    MSG1,
    MSG2_WIRE,
    MSG3,
    MSG3_NAME,
    Harness,
    ManualDiskPool,
    run_dialogue,
)

# A message of bare-LF lines, larger than a chunk, with a lone "." line
# starting exactly at the chunk boundary and another at its very end.
LARGE_LINE = b"z" * 99 + b"\n"
LARGE = b"Subject: large\n\n" + LARGE_LINE * ((READ_CHUNK - 16) // len(LARGE_LINE))
LARGE += b"z" * (READ_CHUNK - len(LARGE) - 1) + b"\n"
LARGE += b".\n" + LARGE_LINE * 1500 + b"."
LARGE_WIRE = LARGE.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..") + b"\r\n"
LARGE_NAME = "2000.M1P1Q1.host"


class SynchronousRetrievalTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness(self)
        self.h.standard_mailbox()
        self.h.deliver("new", LARGE_NAME, LARGE)
        self.client = self.h.connect()
        self.client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")

    def test_large_message_exact(self):
        """
        A message larger than a chunk is streamed whole: line ends
        normalised, the "." lines at the chunk boundary and at the end
        stuffed, the terminator after; the producer is unregistered and
        the message counts as retrieved.
        """
        self.assertEqual(LARGE[READ_CHUNK : READ_CHUNK + 2], b".\n")
        output = self.client.send(b"RETR 4\r\n")
        self.assertEqual(output, b"+OK %d octets\r\n" % (len(LARGE_WIRE) - 2,) + LARGE_WIRE + b".\r\n")
        self.assertIsNone(self.client.transport.producer.attached)
        self.client.send(b"QUIT\r\n")
        self.assertEqual(self.h.listing()["cur"], ["1001.M1P1Q1.host:2,", LARGE_NAME + ":2,S"])

    def test_top_of_large_message(self):
        """
        TOP of a large message sends the header and its lines from the
        first chunk, without streaming the rest.
        """
        self.assertEqual(
            self.client.send(b"TOP 4 1\r\n"),
            b"+OK Top of message follows\r\nSubject: large\r\n\r\n" + LARGE_LINE.replace(b"\n", b"\r\n") + b".\r\n",
        )
        self.assertIsNone(self.client.transport.producer.attached)

    def test_in_order_then_out_of_order(self):
        """
        Messages retrieved in order, out of order, again, and after a read
        ahead was dropped, all come out exact.
        """
        run_dialogue(
            self,
            self.client,
            [
                (b"RETR 1\r\n", b"+OK 28 octets\r\n" + MSG1 + b".\r\n"),
                (b"RETR 3\r\n", b"+OK 30 octets\r\n" + MSG3 + b".\r\n"),
                (b"RETR 2\r\n", b"+OK 27 octets\r\n" + MSG2_WIRE + b".\r\n"),
                (b"RETR 1\r\n", b"+OK 28 octets\r\n" + MSG1 + b".\r\n"),
                (b"TOP 3 0\r\n", b"+OK Top of message follows\r\nSubject: three\r\n\r\n.\r\n"),
                (b"RETR 3\r\n", b"+OK 30 octets\r\n" + MSG3 + b".\r\n"),
            ],
        )


class ReadAheadTests(SynchronousTestCase):
    def setUp(self):
        self.disk = ManualDiskPool()
        self.h = Harness(self, disk=self.disk)
        self.h.standard_mailbox()
        self.client = self.h.connect()
        self.client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")
        self.disk.run_next()  # the scan
        self.assertEqual(self.client.output(), LOGGED_IN)

    def test_following_messages_need_no_wait(self):
        """
        RETR 1 costs one disk job; the job reading messages 2 and 3 ahead
        follows, and once it has run, RETR 2 and RETR 3 are answered at
        once, with no further disk job.
        """
        self.assertEqual(self.client.send(b"RETR 1\r\n"), b"")
        ((function, _, _, _),) = self.disk.calls
        self.assertIs(function, read_message_start)
        self.disk.run_next()
        self.assertEqual(self.client.output(), b"+OK 28 octets\r\n" + MSG1 + b".\r\n")
        ((function, (_, requests), _, _),) = self.disk.calls
        self.assertIs(function, read_message_starts)
        self.assertEqual([message.unique for message, _ in requests], ["1001.M1P1Q1.host", MSG3_NAME])
        self.disk.run_next()
        self.assertEqual(
            self.client.send(b"RETR 2\r\nRETR 3\r\n"),
            b"+OK 27 octets\r\n" + MSG2_WIRE + b".\r\n+OK 30 octets\r\n" + MSG3 + b".\r\n",
        )
        self.assertEqual(self.disk.calls, [])

    def test_unreadable_message_read_ahead(self):
        """
        A message whose read ahead failed gets -ERR [SYS/TEMP] (the error
        logged); the session goes on with the next one.
        """
        self.client.send(b"RETR 1\r\n")
        self.disk.run_next()
        self.client.output()
        path = os.path.join(self.h.mailbox_path(ALICE), "cur", "1001.M1P1Q1.host:2,")
        os.unlink(path)
        os.mkdir(path)
        self.disk.run_next()
        self.assertEqual(
            self.client.send(b"RETR 2\r\nRETR 3\r\n"),
            b"-ERR [SYS/TEMP] Cannot read the message\r\n+OK 30 octets\r\n" + MSG3 + b".\r\n",
        )
        (event,) = [e for e in self.h.events if e.get("log_failure") is not None]
        self.assertIsInstance(event["log_failure"].value, IsADirectoryError)

    def test_pipelined_commands_wait_for_read_ahead(self):
        """
        Commands that arrive while the read ahead runs wait for it, in
        order.
        """
        self.client.send(b"RETR 1\r\n")
        self.disk.run_next()
        self.client.output()
        self.assertEqual(self.client.send(b"RETR 2\r\nNOOP\r\n"), b"")
        self.disk.run_next()
        self.assertEqual(self.client.output(), b"+OK 27 octets\r\n" + MSG2_WIRE + b".\r\n+OK\r\n")

    def test_deleted_messages_not_read_ahead(self):
        """
        Messages marked deleted are not read ahead.
        """
        self.client.send(b"DELE 2\r\nRETR 1\r\n")
        self.disk.run_next()
        ((function, (_, requests), _, _),) = self.disk.calls
        self.assertIs(function, read_message_starts)
        self.assertEqual([message.unique for message, _ in requests], [MSG3_NAME])

    def test_quit_discards_read_ahead(self):
        """
        QUIT stops reading ahead: the job running is left to finish (its
        starts discarded), the update runs, and no new job starts.
        """
        self.assertEqual(self.client.send(b"RETR 1\r\n"), b"")
        self.disk.run_next()
        self.assertEqual(self.client.send(b"DELE 1\r\nQUIT\r\n"), b"+OK 28 octets\r\n" + MSG1 + b".\r\n"
                         b"+OK Message 1 deleted\r\n")
        self.assertEqual(len(self.disk.calls), 2)  # the read ahead, the update
        self.disk.run_all()
        self.assertEqual(self.client.output(), b"+OK Bye\r\n")
        self.assertEqual(self.h.listing(), {"new": [MSG3_NAME], "cur": ["1001.M1P1Q1.host:2,"]})
        self.client.drop()
        self.assertEqual(self.disk.calls, [])

    def test_drop_while_streaming(self):
        """
        A large message whose transfer the connection loss cuts short is
        not counted as retrieved (nor marked seen).
        """
        self.h.deliver("new", LARGE_NAME, LARGE)
        self.client.send(b"QUIT\r\n")
        self.disk.run_all()
        self.client.drop()
        client = self.h.connect()
        client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")
        self.disk.run_next()  # the scan
        client.send(b"RETR 4\r\n")
        self.disk.run_next()  # the first chunk
        self.assertIsNotNone(client.transport.producer)
        self.assertEqual(len(self.disk.calls), 1)  # the next chunk
        client.drop()
        self.disk.run_all()
        self.assertIn(
            "service=pop3 event=disconnect user=alice@example.test peer=127.0.0.1 session=s1 retrieved=0 deleted=0 "
            "changes=discarded",
            self.h.log_lines(),
        )
        self.assertEqual(self.h.listing()["new"], ["1000.M1P1Q1.host,S=28,W=28", MSG3_NAME, LARGE_NAME])

    def test_drop_while_waiting(self):
        """
        A connection lost while RETR waits for the read ahead writes
        nothing when the job returns, and starts no other.
        """
        self.client.send(b"RETR 1\r\n")
        self.disk.run_next()
        self.client.output()
        self.client.send(b"RETR 2\r\n")
        self.client.drop()
        self.disk.run_all()
        self.assertEqual(self.client.output(), b"")
        self.assertEqual(self.disk.calls, [])


class _Greeted(Protocol):
    def __init__(self) -> None:
        self.greeted: Deferred = Deferred()
        self.closed: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.greeted.called:
            self.greeted.callback(data)

    def connectionLost(self, reason: object) -> None:
        self.closed.callback(None)


class RealSocketTests(TestCase):
    @inlineCallbacks
    def test_tcp_nodelay(self):
        """
        On a real TCP connection (loopback), the server's socket has
        TCP_NODELAY set, so replies are not held back by Nagle's algorithm.
        """
        from twisted.internet import reactor

        h = Harness(self)
        sessions = []
        build = h.factory.buildProtocol

        def capture(addr):
            protocol = build(addr)
            sessions.append(protocol)
            return protocol

        h.factory.buildProtocol = capture
        port = reactor.listenTCP(0, h.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), _Greeted())
        greeting = yield client.greeted
        self.assertEqual(greeting, b"+OK mail.example.test POP3 ready\r\n")
        handle = sessions[0].transport.getHandle()
        self.assertNotEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
        client.transport.loseConnection()
        yield client.closed
        while h.factory.connections:
            d = Deferred()
            reactor.callLater(0, d.callback, None)
            yield d
