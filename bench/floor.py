"""
The disk's floor for one session: what a durable Maildir delivery costs on
this machine when nothing else runs, measured in the work folder.

One delivery at a time, as in W2 (one client, one message per
connection, the next only after the 250): create a file in C{tmp/}, write
4 KB, fsync it, rename it into C{new/}, fsync C{new/}. No server and no
CPU work: whatever a server does per message comes on top, so
C{1e6 / total_us} messages per second is a ceiling for W2 that no server
acknowledging after file and folder fsync can pass on this disk.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

FLOOR_COMMITS = 200
FLOOR_MESSAGE_SIZE = 4096


@dataclass
class Floor:
    file_us: float  # create, write, fsync, close
    rename_us: float
    folder_us: float  # fsync of new/

    @property
    def total_us(self) -> float:
        return self.file_us + self.rename_us + self.folder_us

    def describe(self) -> str:
        return (f"durable Maildir delivery, one at a time: {self.total_us:.0f} us (file {self.file_us:.0f},"
                f" rename {self.rename_us:.0f}, folder fsync {self.folder_us:.0f}): at most"
                f" {1e6 / self.total_us:,.0f} msg/s for one session with no CPU work at all")


def measure_floor(folder: str, count: int = FLOOR_COMMITS) -> Floor:
    """
    Deliver C{count} messages into a new Maildir under C{folder} (kept:
    the benchmark deletes nothing mid-run).
    """
    for sub in ("tmp", "new"):
        os.makedirs(os.path.join(folder, sub))
    data = b"x" * FLOOR_MESSAGE_SIZE
    new = os.open(os.path.join(folder, "new"), os.O_RDONLY | os.O_DIRECTORY)
    file_s = rename_s = folder_s = 0.0
    try:
        for n in range(count):
            tmp = os.path.join(folder, "tmp", str(n))
            t0 = time.perf_counter()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            t1 = time.perf_counter()
            os.rename(tmp, os.path.join(folder, "new", str(n)))
            t2 = time.perf_counter()
            os.fsync(new)
            t3 = time.perf_counter()
            file_s += t1 - t0
            rename_s += t2 - t1
            folder_s += t3 - t2
    finally:
        os.close(new)
    return Floor(file_s / count * 1e6, rename_s / count * 1e6, folder_s / count * 1e6)
