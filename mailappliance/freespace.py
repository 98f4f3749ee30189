# -*- test-case-name: tests.test_freespace -*-
"""
The free space of the queue's file system, looked at every few seconds
in the disk pool (never on the reactor thread), so that MAIL can refuse a
message that declares a size (SIZE=, RFC 1870) which cannot fit, with
C{452 4.3.1} before the client sends it (RFC 1870 section 6.1), as Postfix
does: it needs one and a half times the size free (C{queue_minfree}'s
rule). The queue is where any message can go when a Maildir cannot take
it. After space is freed, MAIL may be refused until the next look.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import TimerService

CHECK_INTERVAL = 5.0
# Room needed per byte of a declared size.
SIZE_FACTOR = 1.5


def free_bytes(paths: list[str]) -> int:
    """
    The least space free to unprivileged users on the file systems of
    C{paths} (blocking).
    """
    least = None
    for path in paths:
        stats = os.statvfs(path)
        free = stats.f_bavail * stats.f_frsize
        least = free if least is None else min(least, free)
    return least if least is not None else 0


class FreeSpaceMonitor(TimerService):
    """
    Keeps L{free} up to date.

    @ivar free: the bytes free at the last look, or L{None} before the
        first one or when it failed (then nothing is refused for it).
    """

    def __init__(self, paths: list[str], disk: Any, clock: Any, interval: float = CHECK_INTERVAL) -> None:
        super().__init__(interval, self.look)
        self.clock = clock
        self.paths = paths
        self.disk = disk
        self.free: int | None = None
        self._looking = False

    def look(self) -> Any:
        if self._looking:
            return None
        self._looking = True
        d = self.disk.run(free_bytes, self.paths)

        def seen(result: Any) -> None:
            self._looking = False
            self.free = result if isinstance(result, int) else None

        d.addBoth(seen)
        return d

    def too_little_for(self, size: int) -> bool:
        """
        Whether a message of C{size} bytes should be refused for lack of
        space.
        """
        return self.free is not None and size * SIZE_FACTOR > self.free
