# -*- test-case-name: tests.test_status -*-
"""
Tests for L{mailappliance.status}: the L{StatusWriter} that the server runs
on a timer, and L{read_status}, which the CLI uses to read what it wrote.
"""

from __future__ import annotations

import json
import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.disk import SynchronousDiskPool
from mailappliance.status import STATUS_INTERVAL, StatusWriter, read_status

START = 1700000000.0
SUMMARY = {"queued": 3, "oldest_arrival": 1699999000.0, "delivered_last_hour": 120, "failed_last_hour": 1}


class HeldDisk:
    """
    A disk pool whose jobs run only when the test says: C{run} records the
    job and returns an unfired L{Deferred}.
    """

    def __init__(self):
        self.jobs = []

    def run(self, function, *args):
        d = Deferred()
        self.jobs.append((function, args, d))
        return d

    def finish(self, index):
        function, args, d = self.jobs[index]
        d.callback(function(*args))


class StatusWriterTests(SynchronousTestCase):
    def setUp(self):
        self.queue_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.queue_dir)
        self.path = os.path.join(self.queue_dir, "status.json")
        self.clock = Clock()
        self.clock.advance(START)
        self.counts = {"smtp": 2, "submission": 0, "pop3": 1}
        self.summary = dict(SUMMARY)

    def make_writer(self, disk=None, **kwargs):
        sessions = {name: (lambda n=name: self.counts[n]) for name in self.counts}
        writer = StatusWriter(self.queue_dir, self.clock, disk or SynchronousDiskPool(), sessions,
                              lambda: dict(self.summary), **kwargs)
        self.addCleanup(lambda: writer.running and writer.stopService())
        return writer

    def expected(self, written):
        return {"version": 1, "pid": os.getpid(), "started": START, "written": written,
                "sessions": dict(self.counts), "queue": dict(self.summary)}

    def test_written_at_start(self):
        """
        Nothing is written before the service starts; on start the status
        is written at once, by rename (no temporary file is left), and
        L{read_status} reads back exactly what was written.
        """
        writer = self.make_writer()
        self.clock.advance(5)
        self.assertFalse(os.path.exists(self.path))
        writer.startService()
        self.assertEqual(read_status(self.queue_dir),
                         {"version": 1, "pid": os.getpid(), "started": START, "written": START + 5,
                          "sessions": {"smtp": 2, "submission": 0, "pop3": 1},
                          "queue": {"queued": 3, "oldest_arrival": 1699999000.0,
                                    "delivered_last_hour": 120, "failed_last_hour": 1}})
        self.assertEqual(os.listdir(self.queue_dir), ["status.json"])

    def test_rewritten_on_timer(self):
        """
        The status is written again every L{STATUS_INTERVAL} seconds (two),
        with the figures of that moment, and not in between.
        """
        self.assertEqual(STATUS_INTERVAL, 2.0)
        writer = self.make_writer()
        writer.startService()
        self.counts["smtp"] = 7
        self.summary.update(queued=0, oldest_arrival=None)
        self.clock.advance(1.9)
        self.assertEqual(read_status(self.queue_dir)["written"], START)
        self.assertEqual(read_status(self.queue_dir)["sessions"]["smtp"], 2)
        self.clock.advance(0.1)
        self.assertEqual(read_status(self.queue_dir), self.expected(START + 2))
        self.assertEqual(read_status(self.queue_dir)["queue"]["oldest_arrival"], None)
        self.clock.advance(2)
        self.assertEqual(read_status(self.queue_dir)["written"], START + 4)

    def test_interval(self):
        """
        The C{interval} argument sets the period.
        """
        writer = self.make_writer(interval=5)
        writer.startService()
        self.clock.advance(4.9)
        self.assertEqual(read_status(self.queue_dir)["written"], START)
        self.clock.advance(0.1)
        self.assertEqual(read_status(self.queue_dir)["written"], START + 5)

    def test_no_sessions(self):
        """
        With no services the C{sessions} object is empty.
        """
        self.counts = {}
        self.make_writer().startService()
        self.assertEqual(read_status(self.queue_dir)["sessions"], {})

    def test_one_write_at_a_time(self):
        """
        While a write is still in the disk pool, the timer waits for it and
        a direct call of C{write} does nothing; once it is done, writing
        goes on.
        """
        disk = HeldDisk()
        writer = self.make_writer(disk)
        writer.startService()
        self.assertEqual(len(disk.jobs), 1)
        self.assertIsNone(writer.write())
        self.clock.advance(10)
        self.assertEqual(len(disk.jobs), 1)
        disk.finish(0)
        self.assertEqual(read_status(self.queue_dir)["written"], START)
        self.clock.advance(2)
        self.assertEqual(len(disk.jobs), 2)
        disk.finish(1)
        self.assertEqual(read_status(self.queue_dir)["written"], START + 12)

    def test_failed_write_logged(self):
        """
        A write that fails is logged and the timer goes on: the next write
        succeeds once the cause is gone.
        """
        os.rmdir(self.queue_dir)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        writer = self.make_writer()
        writer.startService()
        # Failing again and again (a full disk) is logged once, not every
        # two seconds; the recovery once.
        for _ in range(5):
            self.clock.advance(2)
        self.assertEqual(len(self.flushLoggedErrors(FileNotFoundError)), 1)
        os.makedirs(self.queue_dir)
        self.clock.advance(2)
        self.assertEqual(read_status(self.queue_dir), self.expected(START + 12))
        lines = [formatEvent(e) for e in events if "status-file" in formatEvent(e)]
        self.assertEqual(lines, [f"event=error what=status-file status=failing path={self.path}",
                                 "event=recovered what=status-file failures=6"])

    def test_failing_figures_do_not_stop_writer(self):
        """
        A session counter or queue summary that raises once does not stop
        the status from being written afterwards.
        """
        writer = self.make_writer()
        writer.startService()
        self.summary = None  # dict(None) raises TypeError
        self.clock.advance(2)
        self.flushLoggedErrors(TypeError)
        self.summary = dict(SUMMARY)
        self.clock.advance(2)
        self.assertEqual(read_status(self.queue_dir), self.expected(START + 4))

    def test_stop_removes_file(self):
        """
        Stopping the service removes the status file and stops the timer;
        stopping when there is no file is not an error.
        """
        writer = self.make_writer()
        writer.startService()
        self.successResultOf(writer.stopService())
        self.assertFalse(os.path.exists(self.path))
        self.clock.advance(10)
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual(read_status(self.queue_dir), None)
        writer.startService()
        os.unlink(self.path)
        self.successResultOf(writer.stopService())
        self.assertEqual(os.listdir(self.queue_dir), [])

    def test_stop_waits_for_write_in_flight(self):
        """
        The file is removed only after a write still in the disk pool has
        finished, so no status file outlives the server.
        """
        disk = HeldDisk()
        writer = self.make_writer(disk)
        writer.startService()
        stopped = writer.stopService()
        self.assertEqual(len(disk.jobs), 1)
        disk.finish(0)
        disk.finish(1)
        self.successResultOf(stopped)
        self.assertFalse(os.path.exists(self.path))


class ReadStatusTests(SynchronousTestCase):
    def setUp(self):
        self.queue_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.queue_dir)
        self.path = os.path.join(self.queue_dir, "status.json")

    def put(self, data):
        with open(self.path, "wb") as f:
            f.write(data)

    def test_missing(self):
        """
        No status file, or no queue folder, gives L{None}.
        """
        self.assertIsNone(read_status(self.queue_dir))
        self.assertIsNone(read_status(os.path.join(self.queue_dir, "missing")))

    def test_corrupt(self):
        """
        A file that is not a JSON object of version 1 gives L{None}.
        """
        for data in [b"", b"{", b"\xff\xfe", b"null", b"[1]", b'"version"', b"{}", b'{"pid": 1}',
                     b'{"version": 2, "pid": 1}', b'{"version": "1"}']:
            self.put(data)
            self.assertIsNone(read_status(self.queue_dir), data)

    def test_unreadable(self):
        """
        A status path that cannot be read (a directory) gives L{None}.
        """
        os.mkdir(self.path)
        self.assertIsNone(read_status(self.queue_dir))

    def test_version_1_as_is(self):
        """
        A version-1 object is returned as it is, without checking its
        other fields (the CLI reads them with defaults).
        """
        self.put(b'{"version": 1}')
        self.assertEqual(read_status(self.queue_dir), {"version": 1})
        status = {"version": 1, "pid": 7, "extra": [1, 2], "queue": {"queued": 0}}
        self.put(json.dumps(status).encode())
        self.assertEqual(read_status(self.queue_dir), status)
