# -*- test-case-name: tests.test_status -*-
"""
What C{mailappliance status} shows: the running server writes a small
status file, C{DATA_DIR/queue/status.json}, every L{STATUS_INTERVAL}
seconds (by rename, in the disk pool; it is a snapshot, not a record, so it
is not fsynced), and the CLI reads it. The server's lock on the queue
folder tells the CLI whether the file describes a running server.

Contents (JSON)::

  {"version": 1, "pid": 1234, "started": 1700000000.0, "written": 1700000100.0,
   "sessions": {"smtp": 2, "submission": 0, "pop3": 1},
   "queue": {"queued": 3, "oldest_arrival": 1699999000.0 | null,
             "delivered_last_hour": 120, "failed_last_hour": 1}}
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from mailappliance.episodes import FailureEpisodes
from mailappliance.logtext import value

STATUS_NAME = "status.json"
STATUS_INTERVAL = 2.0

_log = Logger(namespace="mailappliance")


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


class StatusWriter(TimerService):
    """
    Writes the status file periodically.

    @param sessions: service name to a callable giving its open sessions.
    @param queue: a callable giving the queue manager's C{summary()}.
    """

    def __init__(self, queue_dir: str, clock: Any, disk: Any, sessions: dict[str, Callable[[], int]],
                 queue: Callable[[], dict], interval: float = STATUS_INTERVAL) -> None:
        super().__init__(interval, self.write)
        self.clock = clock
        self.path = os.path.join(queue_dir, STATUS_NAME)
        self.disk = disk
        self.sessions = sessions
        self.queue = queue
        self.started = clock.seconds()
        # The write in the disk pool, if any: at most one at a time.
        self._in_flight: Deferred | None = None
        # A write that keeps failing (a full disk) is logged once, with its
        # traceback, and its end once: not every STATUS_INTERVAL.
        self._episodes = FailureEpisodes(_log)

    def snapshot(self) -> dict:
        return {
            "version": 1,
            "pid": os.getpid(),
            "started": self.started,
            "written": self.clock.seconds(),
            "sessions": {name: count() for name, count in self.sessions.items()},
            "queue": self.queue(),
        }

    def write(self):
        """
        Write the status file, unless a write is still in flight. Never
        fails (a failure is logged), so the timer keeps going.
        """
        if self._in_flight is not None:
            return None
        try:
            data = json.dumps(self.snapshot()).encode()
        except Exception:
            _log.failure("event=status status=error")
            return None
        d = self._in_flight = self.disk.run(_write, self.path, data)

        def done(result):
            self._in_flight = None
            return result

        d.addBoth(done)
        d.addCallbacks(lambda _: self._episodes.succeeded("status-file"),
                       lambda f: self._episodes.failed("status-file", f, path=value(self.path)))
        return d

    def stopService(self):
        """
        Stop the timer and remove the file, after a write still in flight
        (whose rename would otherwise bring the file back).
        """
        stopping = maybeDeferred(super().stopService)
        in_flight = self._in_flight
        if in_flight is None:
            removing = self.disk.run(_unlink_quietly, self.path)
        else:
            removing = Deferred()
            in_flight.addBoth(lambda result: (removing.callback(None), result)[1])
            removing.addCallback(lambda _: self.disk.run(_unlink_quietly, self.path))
        return DeferredList([stopping, removing], consumeErrors=True)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def read_status(queue_dir: str) -> dict | None:
    """
    The last status the server wrote, or L{None}.
    """
    try:
        with open(os.path.join(queue_dir, STATUS_NAME), "rb") as f:
            status = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and status.get("version") == 1 else None
