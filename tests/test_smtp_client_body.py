# -*- test-case-name: tests.test_smtp_client_body -*-
"""
Tests for L{mailappliance.smtp.client_body}.
"""

from __future__ import annotations

import errno
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.disk import SynchronousDiskPool
from mailappliance.smtp.client_body import BODY_CHUNK_SIZE, BodyProducer, SpoolFile, read_chunk
from mailappliance.smtp.client_protocol import ConnectionProblem
from tests.test_dotstuff import reference_stuff


class DeferredDiskPool:
    """
    A disk pool whose work completes only when the test says so.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[defer.Deferred, object, tuple]] = []

    def run(self, function, *args):
        d = defer.Deferred()
        self.pending.append((d, function, args))
        return d

    def complete_one(self) -> None:
        d, function, args = self.pending.pop(0)
        try:
            result = function(*args)
        except OSError as e:
            d.errback(e)
        else:
            d.callback(result)


class PausingConsumer(StringTransport):
    """
    A consumer that pauses its producer when more than C{limit} bytes are
    buffered, like a TCP transport, and records the buffered high-water
    mark.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.buffered = 0
        self.most_buffered = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.buffered += len(data)
        self.most_buffered = max(self.most_buffered, self.buffered)
        if self.buffered > self.limit and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self) -> None:
        """
        The network took everything: resume the producer.
        """
        self.buffered = 0
        if self.producer is not None:
            self.producer.resumeProducing()


class BodyProducerTests(SynchronousTestCase):
    """
    L{BodyProducer} streams the spool file dot-stuffed, honouring pauses.
    """

    def open_body(self, content: bytes) -> int:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        return fd

    def large_body(self) -> bytes:
        line = b"." + b"y" * 70 + b"\r\n"
        return line * (3 * BODY_CHUNK_SIZE // len(line) + 100) + b".\r\n"

    def test_large_body_with_backpressure(self) -> None:
        """
        A body of several chunks is sent exactly (dot-stuffed, ended), and
        while the consumer is paused nothing more is read or written, so
        at most one chunk (plus stuffing) is buffered.
        """
        body = self.large_body()
        clock = Clock()
        disk = DeferredDiskPool()
        consumer = PausingConsumer(limit=1)
        producer = BodyProducer(disk, self.open_body(body), clock, 180)
        consumer.registerProducer(producer, True)
        d = producer.send_to(consumer)
        drains = 0
        while not d.called:
            if disk.pending:
                disk.complete_one()
            else:
                self.assertEqual(disk.pending, [])
                consumer.drain()
                drains += 1
            self.assertLessEqual(consumer.most_buffered, BODY_CHUNK_SIZE * 2)
        wire = reference_stuff(body)
        self.assertEqual(self.successResultOf(d), len(wire))
        self.assertEqual(consumer.value(), wire)
        self.assertGreaterEqual(drains, 3)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_paused_during_read_writes_nothing(self) -> None:
        """
        A pause that comes while a read is in flight holds that chunk (here
        the last, with the end of data) back until resumed.
        """
        disk = DeferredDiskPool()
        consumer = StringTransport()
        producer = BodyProducer(disk, self.open_body(b"hello\r\n"), Clock(), 180)
        d = producer.send_to(consumer)
        producer.pauseProducing()
        disk.complete_one()
        self.assertEqual(consumer.value(), b"")
        self.assertNoResult(d)
        producer.resumeProducing()
        self.assertEqual(consumer.value(), b"hello\r\n.\r\n")
        self.assertEqual(disk.pending, [])
        self.assertEqual(self.successResultOf(d), 10)

    def test_small_body_one_read(self) -> None:
        """
        A body smaller than a chunk costs one job in the disk pool, and is
        written with its end of data in one write.
        """
        disk = DeferredDiskPool()
        consumer = StringTransport()
        writes = []
        real_write = consumer.write
        consumer.write = lambda data: (writes.append(data), real_write(data))
        producer = BodyProducer(disk, self.open_body(b"hello\r\n.dot\r\n"), Clock(), 180)
        d = producer.send_to(consumer)
        disk.complete_one()
        self.assertEqual(disk.pending, [])
        self.assertEqual(writes, [b"hello\r\n..dot\r\n.\r\n"])
        self.assertEqual(self.successResultOf(d), 17)

    def test_whole_chunks(self) -> None:
        """
        A body of exactly two chunks takes two reads and one more that
        finds the end; the body is sent whole.
        """
        body = (b"z" * 98 + b"\r\n") * (2 * BODY_CHUNK_SIZE // 100)
        body += b"z" * (2 * BODY_CHUNK_SIZE - len(body) - 2) + b"\r\n"
        self.assertEqual(len(body), 2 * BODY_CHUNK_SIZE)
        disk = DeferredDiskPool()
        consumer = StringTransport()
        d = BodyProducer(disk, self.open_body(body), Clock(), 180).send_to(consumer)
        jobs = 0
        while disk.pending:
            disk.complete_one()
            jobs += 1
        self.assertEqual(jobs, 3)
        self.assertEqual(consumer.value(), body + b".\r\n")
        self.assertEqual(self.successResultOf(d), len(body) + 3)

    def test_empty_body(self) -> None:
        """
        An empty body is sent as the end of data alone, after one read.
        """
        disk = DeferredDiskPool()
        consumer = StringTransport()
        d = BodyProducer(disk, self.open_body(b""), Clock(), 180).send_to(consumer)
        disk.complete_one()
        self.assertEqual(disk.pending, [])
        self.assertEqual(consumer.value(), b".\r\n")
        self.assertEqual(self.successResultOf(d), 3)

    def test_stopped(self) -> None:
        """
        L{BodyProducer.stopProducing} (the connection is gone) fails the
        sending once the read in flight is back; nothing more is written.
        """
        disk = DeferredDiskPool()
        consumer = StringTransport()
        producer = BodyProducer(disk, self.open_body(b"x\r\n"), Clock(), 180)
        d = producer.send_to(consumer)
        producer.stopProducing()
        disk.complete_one()
        problem = self.failureResultOf(d, ConnectionProblem).value
        self.assertEqual(problem.reason, "connection lost while sending the message")
        self.assertEqual(consumer.value(), b"")

    def test_block_timeout(self) -> None:
        """
        Each pause may last up to the data block time-out; one that lasts
        longer fails the sending.
        """
        clock = Clock()
        consumer = PausingConsumer(limit=1)
        producer = BodyProducer(SynchronousDiskPool(), self.open_body(self.large_body()), clock, 180)
        consumer.registerProducer(producer, True)
        d = producer.send_to(consumer)
        clock.advance(179)
        self.assertNoResult(d)
        consumer.drain()
        clock.advance(179)
        self.assertNoResult(d)
        clock.advance(1)
        problem = self.failureResultOf(d, ConnectionProblem).value
        self.assertEqual(problem.reason, "timed out after 180s sending the message")
        self.assertEqual(problem.status, "4.4.2")
        self.assertEqual(len(consumer.value()), 2 * BODY_CHUNK_SIZE + 2 * (BODY_CHUNK_SIZE // 73 + 1))

    def test_read_error(self) -> None:
        """
        An unreadable spool file is a local problem (4.3.0) that no other
        host would solve.
        """
        fd = self.open_body(b"x")
        bad = os.open(os.devnull, os.O_WRONLY)
        os.close(bad)
        producer = BodyProducer(SynchronousDiskPool(), bad, Clock(), 180)
        problem = self.failureResultOf(producer.send_to(StringTransport()), ConnectionProblem).value
        self.assertEqual(problem.status, "4.3.0")
        self.assertFalse(problem.retry_elsewhere)
        self.assertTrue(problem.reason.startswith("cannot read the queued message: "), problem.reason)
        self.assertIsInstance(fd, int)


class ReadChunkTests(SynchronousTestCase):
    """
    L{read_chunk} reads a chunk and says whether it was the last.
    """

    def setUp(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"0123456789")
        self.fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, self.fd)

    def test_full_chunk(self) -> None:
        """
        A full chunk is not known to be the last, even when it ends at the
        end of the file.
        """
        self.assertEqual(read_chunk(self.fd, 4, 0), (b"0123", False))
        self.assertEqual(read_chunk(self.fd, 4, 6), (b"6789", False))

    def test_short_chunk_is_last(self) -> None:
        """
        A short read is confirmed as the end by a read of nothing.
        """
        self.assertEqual(read_chunk(self.fd, 4, 8), (b"89", True))
        self.assertEqual(read_chunk(self.fd, 4, 10), (b"", True))

    def test_short_read_not_at_end(self) -> None:
        """
        If the second read finds more (a read cut short for another reason),
        the chunk is not the last.
        """
        calls = []
        real_pread = os.pread

        def short_pread(fd, size, offset):
            calls.append((size, offset))
            return real_pread(fd, min(size, 3), offset)

        self.patch(os, "pread", short_pread)
        self.assertEqual(read_chunk(self.fd, 8, 0), (b"012345", False))
        self.assertEqual(calls, [(8, 0), (5, 3)])


class SpoolFileTests(SynchronousTestCase):
    """
    A L{SpoolFile} (a queue file of layout version 2: body, then envelope
    and trailer) is sent only up to its C{length}.
    """

    TAIL = b'{"queue_id": "X"}MAQ2 0000000017 00000000\n'

    def open_file(self, content: bytes) -> int:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        return fd

    def send(self, body: bytes, chunk_size: int = BODY_CHUNK_SIZE) -> bytes:
        fd = self.open_file(body + self.TAIL)
        consumer = StringTransport()
        producer = BodyProducer(SynchronousDiskPool(), SpoolFile(fd, len(body)), Clock(), 180, chunk_size)
        consumer.registerProducer(producer, True)
        d = producer.send_to(consumer)
        wire = reference_stuff(body)
        self.assertEqual(self.successResultOf(d), len(wire))
        return consumer.value()

    def test_stops_at_length(self) -> None:
        """
        Only the body goes on the wire, dot-stuffed and ended; the envelope
        after it never does.
        """
        body = b"Subject: s\r\n\r\n.dot\r\nbody\r\n"
        self.assertEqual(self.send(body), reference_stuff(body))

    def test_chunk_boundaries(self) -> None:
        """
        Bodies ending just before, at and after a chunk boundary, and an
        empty body, are cut exactly.
        """
        for length in (0, 1, 15, 16, 17, 33):
            body = (b"abc\r\n" * 10)[:length]
            self.assertEqual(self.send(body, chunk_size=16), reference_stuff(body), length)

    def test_read_chunk_end(self) -> None:
        """
        L{read_chunk} with an C{end} reads no further, reports the end
        without another read, and fails with C{EIO} if the file ends first.
        """
        fd = self.open_file(b"0123456789")
        self.assertEqual(read_chunk(fd, 4, 0, 6), (b"0123", False))
        self.assertEqual(read_chunk(fd, 4, 4, 6), (b"45", True))
        self.assertEqual(read_chunk(fd, 4, 6, 6), (b"", True))
        error = self.assertRaises(OSError, read_chunk, fd, 8, 8, 12)
        self.assertEqual(error.errno, errno.EIO)
