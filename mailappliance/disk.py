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
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

DEFAULT_DISK_THREADS = 8

# A job: function, positional and keyword arguments, and its Deferred.
_Job = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Deferred]


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

    def fill(fd: int) -> None:
        os.fchmod(fd, mode)
        if owner is not None:
            try:
                os.fchown(fd, *owner)
            except PermissionError:
                pass
        write_all(fd, data)

    fill_and_rename(fd, tmp, fill, lambda _: path)
    if sync_directory:
        fsync_directory(directory)


def fill_and_rename(fd: int, tmp: str, fill: Callable[[int], Any], final: Callable[[Any], str]) -> tuple[Any, str]:
    """
    The durable way to publish a new file: C{fill(fd)} writes it, then it
    is fsynced, closed and renamed from C{tmp} to C{final(result)}. On any
    failure C{fd} is closed, C{tmp} removed and the exception raised
    again. The caller fsyncs the destination directory (or has it synced
    with others). Blocking.

    @param fd: the open file descriptor of C{tmp}; closed in every case.
    @param tmp: the temporary file's path.
    @param fill: writes the content; what it returns goes to C{final}.
    @param final: gives the destination path from C{fill}'s result (a
        Maildir name carries the size).
    @return: C{fill}'s result and the destination path.
    """
    try:
        try:
            result = fill(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        destination = final(result)
        os.rename(tmp, destination)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return result, destination


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


def remove_old_files(directory: str, age: float, now: float | None = None,
                     wanted: Callable[[str], bool] | None = None) -> list[str]:
    """
    Remove the regular files of C{directory} last modified more than
    C{age} seconds ago: what a writer that died left behind. Blocking. A
    missing directory, and a file that vanishes meanwhile, are not errors.

    @param now: Unix time (the system clock by default).
    @param wanted: which names to consider (all by default).
    @return: the paths removed.
    """
    limit = (time.time() if now is None else now) - age
    removed = []
    try:
        with os.scandir(directory) as it:
            entries = [entry for entry in it if wanted is None or wanted(entry.name)]
    except FileNotFoundError:
        return removed
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < limit:
                os.unlink(entry.path)
                removed.append(entry.path)
        except FileNotFoundError:
            continue
    return removed


class DiskPool(Service):
    """
    The thread pool where all blocking disk work of the server runs.

    It is a service: started and stopped with the service tree. Work given
    before start-up waits until it starts; L{stopService} runs the work
    already given, then joins the threads.

    Hand-offs are batched, because on a busy server each hand-off between
    the reactor thread and a disk thread (a futex wake-up, a write to the
    reactor's waker, a GIL transfer) costs more than the small jobs
    themselves:

      - jobs given during one reactor turn are queued together at the end
        of the turn (a C{callLater(0)}), with one wake-up of an idle
        thread; a thread that takes a job and sees more waiting wakes the
        next idle thread, so independent jobs (fsyncs of different files)
        still run in parallel without the reactor thread waking each;
      - results are handed back in batches: the thread that finishes a
        job when no delivery is pending schedules one C{callFromThread};
        every result finished before the reactor runs it rides along.

    Semantics are those of C{deferToThreadPool}: jobs start in the order
    given, up to C{threads} at once, and each L{Deferred} fires on the
    reactor thread with the job's result or fails with its exception.

    @ivar reactor: the reactor that receives the results
        (C{callLater}, C{callFromThread}).
    @ivar max_threads: the most threads running jobs at once.
    """

    name = "disk"

    def __init__(self, reactor: Any, threads: int = DEFAULT_DISK_THREADS) -> None:
        self.reactor = reactor
        self.max_threads = threads
        # Reactor thread only: jobs given during this turn, and the call
        # that queues them at its end.
        self._given: list[_Job] = []
        self._hand_off_call: Any = None
        # Shared with the disk threads, under _lock.
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._queue: deque[_Job] = deque()
        self._idle = 0
        self._stopping = False
        self._accepting = False
        self._threads: list[threading.Thread] = []
        # Finished jobs waiting for the reactor thread, under _results_lock.
        self._results_lock = threading.Lock()
        self._results: list[tuple[Deferred, bool, Any]] = []
        self._delivery_scheduled = False

    def startService(self) -> None:
        super().startService()
        with self._lock:
            self._stopping = False
            self._accepting = True
            self._grow()
            if self._queue and self._idle:
                self._work_ready.notify()

    def stopService(self) -> None:
        """
        Queue the jobs of this turn, let the threads finish every queued
        job, and join them (blocking, as C{ThreadPool.stop} does).
        """
        super().stopService()
        if self._hand_off_call is not None and self._hand_off_call.active():
            self._hand_off_call.cancel()
        self._hand_off()
        with self._lock:
            self._accepting = False
            self._stopping = True
            self._work_ready.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()

    @property
    def thread_count(self) -> int:
        """
        The threads started so far (they stay until L{stopService}).
        """
        with self._lock:
            return len(self._threads)

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """
        Call C{function(*args, **kwargs)} in the pool. Call this on the
        reactor thread only.

        @return: a L{Deferred} firing with its result, or failing with its
            exception, in the reactor thread.
        """
        d: Deferred = Deferred()
        self._given.append((function, args, kwargs, d))
        if self._hand_off_call is None:
            self._hand_off_call = self.reactor.callLater(0, self._hand_off)
        return d

    # -- the reactor side ---------------------------------------------------

    def _hand_off(self) -> None:
        self._hand_off_call = None
        if not self._given:
            return
        jobs, self._given = self._given, []
        with self._lock:
            self._queue.extend(jobs)
            if not self._accepting:
                return
            self._grow()
            if self._idle:
                # One wake-up; the thread wakes the next if there is more.
                self._work_ready.notify()

    def _grow(self) -> None:
        # Under _lock: a thread for each queued job no idle thread will
        # take, up to max_threads. Threads stay until stopService.
        wanted = min(len(self._queue) - self._idle, self.max_threads - len(self._threads))
        for _ in range(wanted):
            thread = threading.Thread(
                target=self._work, name=f"mailappliance-disk-{len(self._threads)}"
            )
            self._threads.append(thread)
            thread.start()

    def _deliver(self) -> None:
        with self._results_lock:
            results, self._results = self._results, []
            self._delivery_scheduled = False
        for d, succeeded, result in results:
            if succeeded:
                d.callback(result)
            else:
                d.errback(result)

    # -- the disk threads -----------------------------------------------------

    def _work(self) -> None:
        lock = self._lock
        while True:
            with lock:
                while not self._queue:
                    if self._stopping:
                        return
                    self._idle += 1
                    self._work_ready.wait()
                    self._idle -= 1
                function, args, kwargs, d = self._queue.popleft()
                if self._queue and self._idle:
                    self._work_ready.notify()
            try:
                result = function(*args, **kwargs)
                succeeded = True
            except BaseException:
                result = Failure()
                succeeded = False
            with self._results_lock:
                self._results.append((d, succeeded, result))
                if self._delivery_scheduled:
                    continue
                self._delivery_scheduled = True
            self.reactor.callFromThread(self._deliver)


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
    that I{started} after the call was made has completed. A request joins
    the fsync that is waiting to start, if there is one: a job counts as
    started only when a disk thread begins it (it takes the requests made
    so far, under a lock), so N sessions that rename into the same
    directory at the same moment share one fsync even when the pool is
    busy. At most one fsync of a directory is queued or running at a time;
    requests made while it runs share the next.
    """

    def __init__(self, disk: Any, fsync: Callable[[str], None] = fsync_directory) -> None:
        self._disk = disk
        self._fsync = fsync
        # directory -> Deferreds waiting for an fsync not yet started;
        # shared with the fsync jobs, under _lock.
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Deferred]] = {}
        # Reactor thread only: directories with an fsync job queued or
        # running.
        self._busy: set[str] = set()

    def sync(self, directory: str) -> Deferred:
        """
        @param directory: the directory to fsync.
        @return: a L{Deferred} firing with L{None} when an fsync begun after
            this call has completed; failing with its L{OSError}.
        """
        d: Deferred = Deferred()
        with self._lock:
            self._waiting.setdefault(directory, []).append(d)
        if directory not in self._busy:
            self._start(directory)
        return d

    def _start(self, directory: str) -> None:
        self._busy.add(directory)
        self._disk.run(self._fsync_blocking, directory).addCallback(self._finished, directory)

    def _fsync_blocking(self, directory: str) -> tuple[list[Deferred], Failure | None]:
        # In the disk pool. The requests taken here were made before this
        # fsync began, so it covers them.
        with self._lock:
            waiters = self._waiting.pop(directory, [])
        try:
            self._fsync(directory)
        except BaseException:
            return waiters, Failure()
        return waiters, None

    def _finished(self, outcome: tuple[list[Deferred], Failure | None], directory: str) -> None:
        waiters, failure = outcome
        self._busy.discard(directory)
        with self._lock:
            more = directory in self._waiting
        if more:
            self._start(directory)
        for waiter in waiters:
            if failure is not None:
                waiter.errback(failure)
            else:
                waiter.callback(None)
