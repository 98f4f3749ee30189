"""
Tests for L{mailappliance.pop3.readahead}: message starts read in one disk
job, a bounded window read ahead in batches, every file closed.
"""

from __future__ import annotations

import os

from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.pop3.mailbox import (
    MessageInfo,
    MessageStart,
    read_message_starts,
    scan_mailbox,
)
from mailappliance.pop3.readahead import MessageReader, first_read_size
from tests.test_pop3_mailbox import make_maildir, put
from tests.test_pop3_server import ManualDiskPool

SMALL = b"Subject: small %d\r\n\r\nbody\r\n"
LARGE = b"Subject: large\r\n\r\n" + b"y" * 98 + b"\r\n" * 2000
CHUNK = 1024


class OpenedFile:
    """
    A message file opened by the code under test, by descriptor.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.fd_closed = False
        self.file = None

    @property
    def closed(self) -> bool:
        return self.fd_closed or (self.file is not None and self.file.closed)


class FirstReadSizeTests(SynchronousTestCase):
    def test_size(self):
        """
        One byte more than the size as sent, at most the chunk size.
        """
        message = MessageInfo("u", "u", 4096, "/nowhere")
        self.assertEqual(first_read_size(message), 4097)
        self.assertEqual(first_read_size(message, 1024), 1024)
        self.assertEqual(first_read_size(MessageInfo("u", "u", 0, "/nowhere")), 1)


class MessageReaderTests(SynchronousTestCase):
    def setUp(self):
        self.mailbox = make_maildir(self.mktemp())
        # Index 1 is larger than a chunk; the others are small.
        for n in range(8):
            put(self.mailbox, "new", f"{n}.M1P1Q1.h", LARGE if n == 1 else SMALL % n)
        self.snapshot = scan_mailbox(self.mailbox)
        self.disk = ManualDiskPool()
        self.reader = self.make_reader()

    def make_reader(self, **kwargs) -> MessageReader:
        return MessageReader(self.disk, self.mailbox, chunk_size=CHUNK, **kwargs)

    def following(self, index: int):
        return ((i, self.snapshot[i]) for i in range(index + 1, len(self.snapshot)))

    def small(self, index: int) -> MessageStart:
        return MessageStart(SMALL % index, None)

    def track_opens(self) -> list:
        """
        @return: the list every message file opened from now on is
            appended to, as an L{OpenedFile}.
        """
        opened: list[OpenedFile] = []
        real_open, real_close, real_fdopen = os.open, os.close, os.fdopen

        def tracking_open(path, *args, **kwargs):
            fd = real_open(path, *args, **kwargs)
            if os.fspath(path).startswith(self.mailbox):
                opened.append(OpenedFile(fd))
            return fd

        def tracking_close(fd):
            for record in opened:
                if record.fd == fd and not record.fd_closed:
                    record.fd_closed = True
            return real_close(fd)

        def tracking_fdopen(fd, *args, **kwargs):
            f = real_fdopen(fd, *args, **kwargs)
            for record in opened:
                if record.fd == fd and not record.fd_closed:
                    record.file = f
            return f

        self.patch(os, "open", tracking_open)
        self.patch(os, "close", tracking_close)
        self.patch(os, "fdopen", tracking_fdopen)
        return opened

    def test_small_message_one_job(self):
        """
        Without reading ahead, a message smaller than a chunk is read whole
        in one job, and its file is closed.
        """
        opened = self.track_opens()
        d = self.reader.read(0, self.snapshot[0])
        self.assertEqual(len(self.disk.calls), 1)
        self.disk.run_all()
        self.assertEqual(self.successResultOf(d), self.small(0))
        self.assertEqual(len(opened), 1)
        self.assertTrue(opened[0].closed)

    def test_large_message_left_open(self):
        """
        A larger message gives its first chunk and the open file,
        positioned after it.
        """
        d = self.reader.read(1, self.snapshot[1])
        self.disk.run_all()
        start = self.successResultOf(d)
        self.assertEqual(start.data, LARGE[:CHUNK])
        self.addCleanup(start.rest.close)
        self.assertEqual(start.rest.read(), LARGE[CHUNK:])

    def test_batch_serves_later_reads(self):
        """
        One job reads the starts of the following messages; reads of them
        then need no job.
        """
        self.reader.read_ahead(self.following(1))
        self.assertEqual(len(self.disk.calls), 1)
        self.assertEqual(self.reader.ahead, [2, 3, 4, 5, 6, 7])
        self.disk.run_all()
        for index in range(2, 8):
            self.assertEqual(self.successResultOf(self.reader.read(index, self.snapshot[index])), self.small(index))
        self.assertEqual(self.disk.calls, [])
        self.assertEqual(self.reader.ahead, [])

    def test_window_messages(self):
        """
        At most window_messages are held; a new job starts only once less
        than half the window is held, and fills it up again.
        """
        reader = self.make_reader(window_messages=4)
        reader.read_ahead(self.following(1))
        self.disk.run_all()
        self.assertEqual(reader.ahead, [2, 3, 4, 5])
        reader.read(2, self.snapshot[2])
        reader.read_ahead(self.following(2))
        self.assertEqual(self.disk.calls, [])
        reader.read(3, self.snapshot[3])
        reader.read_ahead(self.following(3))
        self.assertEqual(self.disk.calls, [])
        reader.read(4, self.snapshot[4])
        reader.read_ahead(self.following(4))
        self.assertEqual(len(self.disk.calls), 1)
        self.assertEqual(reader.ahead, [5, 6, 7])

    def test_window_bytes(self):
        """
        The bytes asked for stay within window_bytes (at least one message
        is read).
        """
        size = first_read_size(self.snapshot[2], CHUNK)
        reader = self.make_reader(window_bytes=3 * size)
        reader.read_ahead(self.following(1))
        self.assertEqual(reader.ahead, [2, 3, 4])
        tiny = self.make_reader(window_bytes=1)
        tiny.read_ahead(self.following(1))
        self.assertEqual(tiny.ahead, [2])

    def test_large_message_ends_batch(self):
        """
        A message that may leave its file open is the last of its job.
        """
        self.reader.read_ahead(self.following(-1))
        self.assertEqual(self.reader.ahead, [0, 1])

    def test_one_job_at_a_time(self):
        """
        While a read-ahead job runs, no other starts.
        """
        self.reader.read_ahead(self.following(1))
        self.reader.read_ahead(self.following(1))
        self.assertEqual(len(self.disk.calls), 1)

    def test_read_while_job_runs(self):
        """
        A read of a message being read ahead waits for that job; the
        others of the job are held, those before the one read dropped.
        """
        self.reader.read_ahead(self.following(1))
        d = self.reader.read(4, self.snapshot[4])
        self.assertNoResult(d)
        self.assertEqual(len(self.disk.calls), 1)
        self.disk.run_all()
        self.assertEqual(self.successResultOf(d), self.small(4))
        self.assertEqual(self.reader.ahead, [5, 6, 7])

    def test_skipped_dropped(self):
        """
        A read further on drops the held messages before it.
        """
        self.reader.read_ahead(self.following(1))
        self.disk.run_all()
        self.assertEqual(self.successResultOf(self.reader.read(5, self.snapshot[5])), self.small(5))
        self.assertEqual(self.reader.ahead, [6, 7])

    def test_wrong_guess_closed(self):
        """
        A read of a message not read ahead drops everything read ahead: an
        open file is closed, in the disk pool, whether its job had returned
        or returns later.
        """
        opened = self.track_opens()
        self.reader.read_ahead(self.following(0))
        self.disk.run_all()
        self.assertEqual(self.reader.ahead, [1])
        self.assertFalse(opened[0].closed)
        d = self.reader.read(0, self.snapshot[0])
        self.assertEqual(self.reader.ahead, [])
        self.assertEqual(len(self.disk.calls), 2)
        self.disk.run_all()
        self.assertEqual(self.successResultOf(d), self.small(0))
        self.assertTrue(opened[0].closed)

        self.reader.read_ahead(self.following(0))
        self.reader.read(7, self.snapshot[7])
        self.disk.run_all()
        self.assertEqual(len(opened), 4)
        self.assertTrue(all(f.closed for f in opened))
        self.assertEqual(self.reader.ahead, [])

    def test_close(self):
        """
        Closing drops what is read ahead (closing its file, now or once its
        job returns) and stops further reading ahead.
        """
        opened = self.track_opens()
        self.reader.read_ahead(self.following(0))
        self.disk.run_all()
        self.reader.close()
        self.disk.run_all()
        self.assertTrue(opened[0].closed)
        self.reader.read_ahead(self.following(0))
        self.assertEqual(self.disk.calls, [])
        self.assertEqual(self.reader.ahead, [])

        other = self.make_reader()
        other.read_ahead(self.following(0))
        other.close()
        self.disk.run_all()
        self.assertEqual(len(opened), 2)
        self.assertTrue(opened[1].closed)

    def test_close_while_waiting(self):
        """
        A read waiting for a job when the session closes still gets its
        start (the session closes its file).
        """
        self.reader.read_ahead(self.following(0))
        d = self.reader.read(1, self.snapshot[1])
        self.reader.close()
        self.disk.run_all()
        start = self.successResultOf(d)
        self.assertEqual(start.data, LARGE[:CHUNK])
        start.rest.close()

    def test_gone(self):
        """
        A message removed since the snapshot reads as L{None}, ahead or
        not.
        """
        os.unlink(self.snapshot[3].path)
        self.reader.read_ahead(self.following(2))
        self.disk.run_all()
        self.assertIsNone(self.successResultOf(self.reader.read(3, self.snapshot[3])))
        d = self.reader.read(3, self.snapshot[3])
        self.disk.run_all()
        self.assertIsNone(self.successResultOf(d))

    def test_error_of_one_message(self):
        """
        A message that cannot be read fails its own read only, ahead or
        waited for; the others of the job are served.
        """
        os.unlink(self.snapshot[3].path)
        os.mkdir(self.snapshot[3].path)
        self.reader.read_ahead(self.following(1))
        self.disk.run_all()
        self.assertEqual(self.successResultOf(self.reader.read(2, self.snapshot[2])), self.small(2))
        self.failureResultOf(self.reader.read(3, self.snapshot[3]), IsADirectoryError)
        self.assertEqual(self.successResultOf(self.reader.read(4, self.snapshot[4])), self.small(4))

        reader = self.make_reader()
        reader.read_ahead(self.following(1))
        d = reader.read(3, self.snapshot[3])
        self.disk.run_all()
        self.failureResultOf(d, IsADirectoryError)

    def test_job_failure(self):
        """
        A read-ahead job that fails as a whole fails a read waiting for it;
        unwaited, it is forgotten and the next read makes its own job.
        """

        class FailingDisk(ManualDiskPool):
            def run(self, function, *args, **kwargs):
                if function is read_message_starts:
                    return fail(MemoryError())
                return super().run(function, *args, **kwargs)

        reader = MessageReader(FailingDisk(), self.mailbox, chunk_size=CHUNK)
        reader.read_ahead(self.following(1))
        self.assertEqual(reader.ahead, [])

        waiting = MessageReader(self.disk, self.mailbox, chunk_size=CHUNK)
        waiting.read_ahead(self.following(1))
        d = waiting.read(2, self.snapshot[2])
        (_, _, _, job) = self.disk.calls.pop()
        job.errback(MemoryError())
        self.failureResultOf(d, MemoryError)
