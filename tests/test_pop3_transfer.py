"""
Tests for L{mailappliance.pop3.transfer}: streaming with back-pressure.
"""

from __future__ import annotations

import io

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.disk import SynchronousDiskPool
from mailappliance.dotstuff import MessageTransform
from mailappliance.pop3.transfer import MessageSender, TransferAborted


class ManualDiskPool:
    """
    A disk pool whose work runs only when the test says so.
    """

    def __init__(self):
        self.calls: list[tuple] = []

    def run(self, function, *args, **kwargs):
        d = Deferred()
        self.calls.append((function, args, kwargs, d))
        return d

    def run_next(self):
        function, args, kwargs, d = self.calls.pop(0)
        maybeDeferred(function, *args, **kwargs).chainDeferred(d)

    def run_all(self):
        while self.calls:
            self.run_next()


class PausingConsumer:
    """
    A consumer that pauses its producer once it holds C{high} bytes not
    yet taken by the test, as a TCP transport does with its write buffer.
    """

    def __init__(self, high: int):
        self.high = high
        self.pending = bytearray()
        self.received = bytearray()
        self.producer = None
        self.paused = False
        self.max_pending = 0

    def write(self, data: bytes) -> None:
        self.pending += data
        self.max_pending = max(self.max_pending, len(self.pending))
        if len(self.pending) >= self.high and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def drain(self) -> None:
        self.received += self.pending
        del self.pending[:]
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()


class TrackingFile(io.BytesIO):
    """
    A file that remembers the largest read asked of it.
    """

    largest_read = 0
    reads = 0

    def read(self, size=-1):
        self.reads += 1
        self.largest_read = max(self.largest_read, size)
        return super().read(size)


class MessageSenderTests(SynchronousTestCase):
    def test_large_message_bounded(self):
        """
        A 16 MiB message goes through a consumer that pauses at 128 KiB:
        the bytes waiting never exceed the high mark plus one transformed
        chunk, reads are one chunk at a time, and the output is complete
        and exact.
        """
        line = b"x" * 98 + b"\n"
        data = (line * (16 * 1024 * 1024 // len(line))) + b".last\n"
        consumer = PausingConsumer(128 * 1024)
        f = TrackingFile(data)
        sender = MessageSender(SynchronousDiskPool(), f, MessageTransform(), consumer, chunk_size=64 * 1024)
        consumer.producer = sender
        done = sender.start()
        rounds = 0
        while not done.called:
            self.assertTrue(consumer.paused)
            consumer.drain()
            rounds += 1
        consumer.drain()
        self.successResultOf(done)
        self.assertGreater(rounds, 100)
        # A chunk of bare-LF lines grows by a CR per line when normalised.
        self.assertLessEqual(consumer.max_pending, 128 * 1024 + 2 * 64 * 1024)
        self.assertEqual(f.largest_read, 64 * 1024)
        expected = data.replace(b"\n", b"\r\n").replace(b"\r\n.last", b"\r\n..last") + b".\r\n"
        self.assertEqual(bytes(consumer.received), expected)
        self.assertTrue(f.closed)

    def test_no_reads_while_paused(self):
        """
        While paused, no read is started; resuming starts one.
        """
        disk = ManualDiskPool()
        consumer = PausingConsumer(10**9)
        sender = MessageSender(disk, io.BytesIO(b"a\r\n" * 10), MessageTransform(), consumer, chunk_size=6)
        consumer.producer = sender
        d = sender.start()
        self.assertEqual(len(disk.calls), 1)
        sender.pauseProducing()
        disk.run_next()
        self.assertEqual(disk.calls, [])
        self.assertEqual(bytes(consumer.pending), b"a\r\na\r\n")
        sender.resumeProducing()
        self.assertEqual(len(disk.calls), 1)
        disk.run_all()
        self.successResultOf(d)
        self.assertEqual(bytes(consumer.pending), b"a\r\n" * 10 + b".\r\n")

    def test_top_stops_reading(self):
        """
        TOP stops reading once it has its lines.
        """
        f = TrackingFile(b"A: 1\r\n\r\nl1\r\nl2\r\n" + b"x" * 1000)
        consumer = PausingConsumer(10**9)
        sender = MessageSender(SynchronousDiskPool(), f, MessageTransform(1), consumer, chunk_size=16)
        consumer.producer = sender
        self.successResultOf(sender.start())
        self.assertEqual(bytes(consumer.pending), b"A: 1\r\n\r\nl1\r\n.\r\n")
        # The first 16 bytes hold the header and line 1: one read is all.
        self.assertEqual(f.reads, 1)

    def test_progress(self):
        """
        The progress callable is called for each chunk and at the end.
        """
        calls = []
        consumer = PausingConsumer(10**9)
        sender = MessageSender(
            SynchronousDiskPool(), io.BytesIO(b"abcdef"), MessageTransform(), consumer, lambda: calls.append(1), 4
        )
        consumer.producer = sender
        self.successResultOf(sender.start())
        self.assertEqual(len(calls), 3)

    def test_read_error(self):
        """
        A read error fails the transfer with it, and the file is closed.
        """

        class Broken(io.BytesIO):
            def read(self, size=-1):
                raise OSError(5, "Input/output error")

        f = Broken(b"")
        consumer = PausingConsumer(10**9)
        sender = MessageSender(SynchronousDiskPool(), f, MessageTransform(), consumer)
        consumer.producer = sender
        failure = self.failureResultOf(sender.start(), OSError)
        self.assertEqual(failure.value.errno, 5)
        self.assertTrue(f.closed)

    def test_stop_waits_for_read_before_close(self):
        """
        Stopped while a read is running in the pool, the sender fails with
        L{TransferAborted} at once but closes the file only after that read
        has returned, and writes nothing more.
        """
        disk = ManualDiskPool()
        f = io.BytesIO(b"abc")
        consumer = PausingConsumer(10**9)
        sender = MessageSender(disk, f, MessageTransform(), consumer)
        consumer.producer = sender
        d = sender.start()
        sender.stopProducing()
        self.failureResultOf(d, TransferAborted)
        self.assertFalse(f.closed)
        self.assertEqual(len(disk.calls), 1)
        disk.run_all()
        self.assertTrue(f.closed)
        self.assertEqual(bytes(consumer.pending), b"")

    def test_stop_after_end_harmless(self):
        """
        stopProducing after the end changes nothing.
        """
        consumer = PausingConsumer(10**9)
        sender = MessageSender(SynchronousDiskPool(), io.BytesIO(b"a"), MessageTransform(), consumer)
        consumer.producer = sender
        d = sender.start()
        sender.stopProducing()
        self.assertIsNone(self.successResultOf(d))
        self.assertIsInstance(Failure(TransferAborted()).value, TransferAborted)
