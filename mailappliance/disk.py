# -*- test-case-name: tests.test_disk -*-
"""
Blocking disk work, kept off the reactor thread.

Every file write, fsync, rename and directory scan of the server runs in the
thread pool of a L{DiskPool}, started and stopped with the service tree. The
blocking helpers here (L{write_all}, L{fsync_directory},
L{write_file_durably}) are the only way the product makes a file durable:
write to a temporary name in the same directory, fsync the file, rename it
into place, fsync the directory.

L{DirectorySyncer} batches directory fsyncs: when many sessions commit into
the same directory at the same moment, one fsync made after all their
renames covers them all (group commit).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

DEFAULT_DISK_THREADS = 8


def write_all(fd: int, data: bytes | memoryview) -> None:
    """
    Write all of C{data} to the file descriptor, looping over short writes.

    @raise OSError: as C{os.write} does.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_directory(path: str) -> None:
    """
    fsync a directory, so that renames and creations in it are durable.

    @raise OSError: if the directory cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: str, data: bytes, mode: int = 0o600, sync_directory: bool = True,
                       owner: tuple[int, int] | None = None) -> None:
    """
    Replace C{path} atomically with C{data}: write a temporary file in the
    same directory, fsync it, rename it over C{path}, fsync the directory.
    On failure the temporary file is removed and C{path} is untouched.

    @param mode: the new file's permission bits, set exactly (whatever the
        umask) before the rename.
    @param owner: C{(uid, gid)} to give the new file before the rename, when
        allowed (an administrator editing as root keeps the file readable
        by the server's user); L{None} leaves the creator's.
    @raise OSError: on any I/O error.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.tmp.%d" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            if owner is not None:
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    pass
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_directory:
        fsync_directory(directory)


def ensure_directory(path: str, mode: int = 0o700) -> None:
    """
    Create a directory (and its parents) if missing, and make the new
    entries durable by syncing the parent of each created level.
    """
    path = os.path.abspath(path)
    missing = []
    probe = path
    while not os.path.isdir(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        fsync_directory(os.path.dirname(directory))


class DiskPool(Service):
    """
    The thread pool where all blocking disk work of the server runs.

    It is a service: started and stopped with the service tree. Work given
    before start-up waits in the pool's queue until it starts.

    @ivar reactor: the reactor that receives the results.
    """

    name = "disk"

    def __init__(self, reactor: Any, threads: int = DEFAULT_DISK_THREADS) -> None:
        self.reactor = reactor
        self.threadpool = ThreadPool(minthreads=0, maxthreads=threads, name="mailappliance-disk")

    def startService(self) -> None:
        super().startService()
        self.threadpool.start()

    def stopService(self) -> None:
        super().stopService()
        self.threadpool.stop()

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """
        Call C{function(*args, **kwargs)} in the pool.

        @return: a L{Deferred} firing with its result, or failing with its
            exception, in the reactor thread.
        """
        return deferToThreadPool(self.reactor, self.threadpool, function, *args, **kwargs)


class SynchronousDiskPool:
    """
    A stand-in for L{DiskPool} that runs the work at once in the calling
    thread: for tests and for the command line, which has no reactor.
    """

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        from twisted.internet.defer import maybeDeferred

        return maybeDeferred(function, *args, **kwargs)


class DirectorySyncer:
    """
    Group commit for directory fsyncs.

    L{sync} returns a L{Deferred} that fires once an fsync of the directory
    has I{started} after the call was made, and completed. A request joins
    the fsync that is waiting to start, if there is one, so N sessions that
    rename into the same directory at the same moment share one fsync.
    """

    def __init__(self, disk: Any, fsync: Callable[[str], None] = fsync_directory) -> None:
        self._disk = disk
        self._fsync = fsync
        # directory -> list of Deferreds waiting for an fsync not yet started
        self._waiting: dict[str, list[Deferred]] = {}
        # directories with an fsync running now
        self._running: set[str] = set()

    def sync(self, directory: str) -> Deferred:
        """
        @param directory: the directory to fsync.
        @return: a L{Deferred} firing with L{None} when an fsync begun after
            this call has completed; failing with its L{OSError}.
        """
        d: Deferred = Deferred()
        waiters = self._waiting.get(directory)
        if waiters is not None:
            waiters.append(d)
            return d
        self._waiting[directory] = [d]
        if directory not in self._running:
            self._start(directory)
        return d

    def _start(self, directory: str) -> None:
        waiters = self._waiting.pop(directory)
        self._running.add(directory)

        def fired(result: Any) -> None:
            self._running.discard(directory)
            if directory in self._waiting:
                self._start(directory)
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)

        self._disk.run(self._fsync, directory).addBoth(fired)
