# -*- test-case-name: tests.test_disk -*-
"""
Tests for L{mailappliance.disk}: the durable-write helpers, the batching
L{DiskPool} and the group commit of L{DirectorySyncer}.

The pool's tests use real threads with a fake reactor whose turns the test
ends (C{Clock.advance(0)}) and whose C{callFromThread} calls the test runs
by hand, so hand-offs and deliveries can be counted exactly. No test
sleeps: a test waits only for threads it has released (joined by
C{stopService}), and a job that waits for another uses a
L{threading.Barrier} with a time-out, so a pool that wrongly serialises
them fails instead of hanging.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailappliance import disk
from mailappliance.disk import (
    DirectorySyncer,
    DiskPool,
    SynchronousDiskPool,
    ensure_directory,
    fill_and_rename,
    fsync_directory,
    remove_old_files,
    write_all,
    write_file_durably,
)

# Long enough never to expire on a loaded machine, short enough that a
# broken pool fails the test rather than hangs the run.
BARRIER_TIMEOUT = 10.0


class ThreadsReactor:
    """
    The two reactor methods the pool uses: C{callLater} on a L{Clock}, and
    C{callFromThread}, which records the call (from any thread) for
    L{run_thread_calls}.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self._lock = threading.Lock()
        self.thread_calls: list[tuple[Any, tuple, dict]] = []
        self.thread_call_count = 0

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kwargs)

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.thread_calls.append((f, args, kwargs))
            self.thread_call_count += 1

    def end_turn(self) -> None:
        """
        End the current reactor turn: run the calls due now.
        """
        self.clock.advance(0)

    def run_thread_calls(self) -> None:
        with self._lock:
            calls, self.thread_calls = self.thread_calls, []
        for f, args, kwargs in calls:
            f(*args, **kwargs)


class DiskPoolTests(SynchronousTestCase):
    """
    L{DiskPool} hands jobs over in batches and keeps the semantics of
    C{deferToThreadPool}.
    """

    def make_pool(self, threads: int = 8, start: bool = True) -> DiskPool:
        self.reactor = ThreadsReactor()
        pool = DiskPool(self.reactor, threads=threads)
        if start:
            pool.startService()
        self.addCleanup(lambda: pool.running and pool.stopService())
        return pool

    def results(self, deferreds: list[Deferred]) -> list[Any]:
        return [self.successResultOf(d) for d in deferreds]

    def test_one_hand_off_per_turn(self) -> None:
        """
        Jobs given during one reactor turn are handed to the threads
        together at its end: one call scheduled, no thread started before.
        """
        pool = self.make_pool()
        ran: list[int] = []
        deferreds = [pool.run(ran.append, n) for n in range(5)]

        self.assertEqual(len(self.reactor.clock.getDelayedCalls()), 1)
        self.assertEqual(pool.thread_count, 0)
        self.assertEqual(ran, [])

        self.reactor.end_turn()
        pool.stopService()

        self.assertEqual(sorted(ran), [0, 1, 2, 3, 4])
        self.assertEqual(self.reactor.clock.getDelayedCalls(), [])
        self.reactor.run_thread_calls()
        self.assertEqual(self.results(deferreds), [None] * 5)

    def test_results_delivered_in_one_call(self) -> None:
        """
        Results finished before the reactor thread picks them up are
        delivered by one C{callFromThread}; the L{Deferred}s fire only
        then, on the reactor side, each with its own job's result.
        """
        pool = self.make_pool()
        deferreds = [pool.run(lambda n=n: n * n) for n in range(6)]
        self.reactor.end_turn()
        pool.stopService()

        self.assertEqual(self.reactor.thread_call_count, 1)
        self.assertNoResult(deferreds[0])
        self.reactor.run_thread_calls()
        self.assertEqual(self.results(deferreds), [0, 1, 4, 9, 16, 25])

    def test_next_batch_of_results_gets_its_own_call(self) -> None:
        """
        Once a delivery has run, the next finished job schedules a new one.
        """
        pool = self.make_pool(threads=1)
        first = pool.run(lambda: "first")
        self.reactor.end_turn()
        done = threading.Event()
        # The first result is in once the next job runs (one thread, FIFO).
        second = pool.run(done.set)
        self.reactor.end_turn()
        self.assertTrue(done.wait(BARRIER_TIMEOUT))
        self.reactor.run_thread_calls()
        self.assertEqual(self.successResultOf(first), "first")
        third = pool.run(lambda: "third")
        self.reactor.end_turn()
        pool.stopService()
        self.reactor.run_thread_calls()

        self.assertEqual(self.successResultOf(second), None)
        self.assertEqual(self.successResultOf(third), "third")
        self.assertEqual(self.reactor.thread_call_count, 2)

    def test_independent_jobs_run_in_parallel(self) -> None:
        """
        Jobs of one batch are not serialised in one thread: three jobs that
        each wait for the other two all complete.
        """
        pool = self.make_pool(threads=4)
        barrier = threading.Barrier(3, timeout=BARRIER_TIMEOUT)
        deferreds = [pool.run(barrier.wait) for _ in range(3)]
        self.reactor.end_turn()
        pool.stopService()
        self.reactor.run_thread_calls()

        self.assertEqual(sorted(self.results(deferreds)), [0, 1, 2])
        self.assertEqual(pool.thread_count, 0, "stopService joins the threads")

    def test_thread_limit(self) -> None:
        """
        No more than C{threads} threads are started, however many jobs
        wait; the extra jobs run when a thread is free.
        """
        pool = self.make_pool(threads=2)
        barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT)
        deferreds = [pool.run(barrier.wait) for _ in range(4)]
        deferreds.append(pool.run(lambda: "last"))
        self.reactor.end_turn()

        self.assertEqual(pool.thread_count, 2)
        pool.stopService()
        self.reactor.run_thread_calls()
        self.assertEqual(self.results(deferreds)[-1], "last")

    def test_jobs_start_in_order(self) -> None:
        """
        Jobs start in the order given, across turns.
        """
        pool = self.make_pool(threads=1)
        order: list[int] = []
        for n in range(3):
            pool.run(order.append, n)
        self.reactor.end_turn()
        for n in range(3, 6):
            pool.run(order.append, n)
        self.reactor.end_turn()
        pool.stopService()

        self.assertEqual(order, [0, 1, 2, 3, 4, 5])

    def test_exception(self) -> None:
        """
        A job's exception fails its L{Deferred} with that exception; the
        other jobs of the batch are not affected.
        """
        pool = self.make_pool()
        failing = pool.run(lambda: 1 // 0)
        working = pool.run(lambda: "fine")
        self.reactor.end_turn()
        pool.stopService()
        self.reactor.run_thread_calls()

        self.failureResultOf(failing, ZeroDivisionError)
        self.assertEqual(self.successResultOf(working), "fine")

    def test_keyword_arguments(self) -> None:
        """
        Positional and keyword arguments reach the function.
        """
        pool = self.make_pool()
        d = pool.run(lambda a, b=0: (a, b), 1, b=2)
        self.reactor.end_turn()
        pool.stopService()
        self.reactor.run_thread_calls()

        self.assertEqual(self.successResultOf(d), (1, 2))

    def test_work_before_start(self) -> None:
        """
        Jobs given before the service starts wait for it, then run.
        """
        pool = self.make_pool(start=False)
        ran: list[str] = []
        d = pool.run(ran.append, "early")
        self.reactor.end_turn()
        self.assertEqual((ran, pool.thread_count), ([], 0))

        pool.startService()
        pool.stopService()
        self.reactor.run_thread_calls()

        self.assertEqual(ran, ["early"])
        self.assertIsNone(self.successResultOf(d))

    def test_stop_runs_jobs_of_this_turn(self) -> None:
        """
        L{DiskPool.stopService} runs jobs given during the current turn
        (not handed over yet) before it returns.
        """
        pool = self.make_pool()
        ran: list[str] = []
        pool.run(ran.append, "late")
        pool.stopService()

        self.assertEqual(ran, ["late"])
        self.assertEqual(self.reactor.clock.getDelayedCalls(), [])

    def test_restart(self) -> None:
        """
        A stopped pool can be started again.
        """
        pool = self.make_pool()
        pool.stopService()
        pool.startService()
        d = pool.run(lambda: "again")
        self.reactor.end_turn()
        pool.stopService()
        self.reactor.run_thread_calls()

        self.assertEqual(self.successResultOf(d), "again")


class RealReactorDiskPoolTests(TestCase):
    """
    L{DiskPool} on the real reactor.
    """

    def test_many_jobs(self) -> Deferred:
        """
        Jobs given from callbacks of other jobs' results, and many at
        once, all complete with their own results.
        """
        from twisted.internet import reactor

        pool = DiskPool(reactor, threads=3)
        pool.startService()
        self.addCleanup(pool.stopService)

        def chain(n: int) -> Deferred:
            d = pool.run(lambda: n)
            d.addCallback(lambda value: pool.run(lambda: value * 2))
            return d

        d = gatherResults([chain(n) for n in range(100)])
        d.addCallback(self.assertEqual, [n * 2 for n in range(100)])
        return d


class SynchronousDiskPoolTests(SynchronousTestCase):
    """
    L{SynchronousDiskPool} runs the job at once.
    """

    def test_result_and_failure(self) -> None:
        """
        The L{Deferred} has already fired with the result or the exception.
        """
        pool = SynchronousDiskPool()
        self.assertEqual(self.successResultOf(pool.run(lambda a, b=0: a + b, 1, b=2)), 3)
        self.failureResultOf(pool.run(lambda: 1 // 0), ZeroDivisionError)


class WriteHelperTests(SynchronousTestCase):
    """
    L{write_all}, L{fsync_directory}, L{write_file_durably} and
    L{ensure_directory}.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.fsynced: list[str] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            self.fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        self.patch(os, "fsync", fsync)

    def test_fill_and_rename(self) -> None:
        """
        L{fill_and_rename} writes through C{fill}, fsyncs the file before
        the rename, and names the destination from C{fill}'s result.
        """
        tmp = os.path.join(self.root, "tmp-file")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

        def fill(fd: int) -> int:
            write_all(fd, b"content")
            return 7

        result, final = fill_and_rename(fd, tmp, fill, lambda size: os.path.join(self.root, f"done,S={size}"))

        self.assertEqual((result, final), (7, os.path.join(self.root, "done,S=7")))
        self.assertEqual(self.fsynced, [tmp])
        self.assertEqual(sorted(os.listdir(self.root)), ["done,S=7"])
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"content")
        self.assertRaises(OSError, os.fstat, fd)

    def test_fill_and_rename_failure(self) -> None:
        """
        When C{fill} (or the fsync, or the rename) fails, the descriptor is
        closed, the temporary file removed and the error raised.
        """
        for failing in ("fill", "rename"):
            tmp = os.path.join(self.root, f"tmp-{failing}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

            def fill(fd: int, failing: str = failing) -> None:
                write_all(fd, b"partial")
                if failing == "fill":
                    raise OSError(28, "No space left on device")

            def final(_: object, failing: str = failing) -> str:
                # A destination in a folder that does not exist: rename fails.
                return os.path.join(self.root, "missing", "x") if failing == "rename" else self.fail("reached")

            self.assertRaises(OSError, fill_and_rename, fd, tmp, fill, final)
            self.assertEqual(os.listdir(self.root), [])
            self.assertRaises(OSError, os.fstat, fd)

    def test_write_all_loops_over_short_writes(self) -> None:
        """
        L{write_all} keeps writing after a short write until every byte is
        out.
        """
        real_write = os.write
        sizes: list[int] = []

        def short_write(fd: int, data: Any) -> int:
            written = real_write(fd, bytes(data[:3]))
            sizes.append(written)
            return written

        path = os.path.join(self.root, "f")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        self.patch(os, "write", short_write)
        try:
            write_all(fd, b"0123456789")
        finally:
            os.close(fd)

        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"0123456789")
        self.assertEqual(sizes, [3, 3, 3, 1])

    def test_fsync_directory(self) -> None:
        """
        L{fsync_directory} fsyncs the directory itself; a missing one
        raises L{FileNotFoundError}.
        """
        fsync_directory(self.root)

        self.assertEqual(self.fsynced, [self.root])
        self.assertRaises(FileNotFoundError, fsync_directory, os.path.join(self.root, "missing"))

    def test_write_file_durably(self) -> None:
        """
        L{write_file_durably} replaces the file with exactly the data and
        mode given (whatever the umask), fsyncing the new file and then
        the directory, and leaves no temporary file.
        """
        path = os.path.join(self.root, "state")
        with open(path, "wb") as f:
            f.write(b"old contents, longer than the new")
        old_umask = os.umask(0o077)
        try:
            write_file_durably(path, b"new", mode=0o644)
        finally:
            os.umask(old_umask)

        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        self.assertEqual(os.listdir(self.root), ["state"])
        self.assertEqual(len(self.fsynced), 2)
        self.assertTrue(self.fsynced[0].startswith(os.path.join(self.root, ".state.tmp.")), self.fsynced)
        self.assertEqual(self.fsynced[1], self.root)

    def test_write_file_durably_without_directory_sync(self) -> None:
        """
        With C{sync_directory=False} only the file is fsynced.
        """
        path = os.path.join(self.root, "state")
        write_file_durably(path, b"data", sync_directory=False)

        self.assertEqual(len(self.fsynced), 1)
        self.assertNotEqual(self.fsynced[0], self.root)

    def test_write_file_durably_failure(self) -> None:
        """
        If the write fails, the old file is untouched, the temporary file
        is removed and the error is raised.
        """
        path = os.path.join(self.root, "state")
        with open(path, "wb") as f:
            f.write(b"old")

        def broken_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(os, "fsync", broken_fsync)
        self.assertRaises(OSError, write_file_durably, path, b"new")

        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(os.listdir(self.root), ["state"])

    def test_ensure_directory_creates_levels_durably(self) -> None:
        """
        L{ensure_directory} creates each missing level with the mode given
        and fsyncs the parent of each level it created, outermost first.
        """
        path = os.path.join(self.root, "a", "b", "c")
        ensure_directory(path, mode=0o750)

        self.assertTrue(os.path.isdir(path))
        for level in ("a", "a/b", "a/b/c"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.root, level)).st_mode), 0o750 & ~_umask())
        self.assertEqual(
            self.fsynced,
            [self.root, os.path.join(self.root, "a"), os.path.join(self.root, "a", "b")],
        )

    def test_ensure_directory_existing(self) -> None:
        """
        An existing directory is left alone: nothing is created or synced.
        """
        ensure_directory(self.root)

        self.assertEqual(self.fsynced, [])

    def test_ensure_directory_file_in_the_way(self) -> None:
        """
        A file where a directory should be raises an L{OSError}.
        """
        blocker = os.path.join(self.root, "file")
        with open(blocker, "wb"):
            pass

        self.assertRaises(OSError, ensure_directory, os.path.join(blocker, "sub"))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


class RemoveOldFilesTests(SynchronousTestCase):
    def test_old_files_removed(self):
        """
        L{remove_old_files} removes the regular files last modified more
        than C{age} seconds before C{now}, among the names C{wanted}
        accepts, and returns their paths; younger files, unwanted names,
        folders and symbolic links stay.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "old-folder"))
        os.symlink("/nonexistent", os.path.join(folder, "old-link"))
        now = 1700000000.0
        for name, age in (("old", 100), ("young", 98), ("old-skipped", 100)):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"x")
            os.utime(os.path.join(folder, name), (now - age, now - age))
        os.utime(os.path.join(folder, "old-folder"), (now - 100, now - 100))
        removed = remove_old_files(folder, 99, now, lambda name: name != "old-skipped")
        self.assertEqual(removed, [os.path.join(folder, "old")])
        self.assertEqual(sorted(os.listdir(folder)), ["old-folder", "old-link", "old-skipped", "young"])

    def test_missing_folder(self):
        """
        A missing folder is not an error: nothing is removed.
        """
        self.assertEqual(remove_old_files(os.path.abspath(self.mktemp()), 1), [])


class ManualDiskPool:
    """
    A disk pool whose jobs wait until the test runs them.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple, Deferred]] = []

    def run(self, function: Any, *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((function, args, d))
        return d

    def run_next(self) -> None:
        function, args, d = self.jobs.pop(0)
        try:
            result = function(*args)
        except Exception as e:  # noqa: BLE001 -- handed to the Deferred
            d.errback(e)
        else:
            d.callback(result)


class DirectorySyncerTests(SynchronousTestCase):
    """
    L{DirectorySyncer} shares directory fsyncs between requests.
    """

    def setUp(self) -> None:
        self.disk = ManualDiskPool()
        self.synced: list[str] = []
        self.syncer = DirectorySyncer(self.disk, fsync=self.synced.append)

    def test_requests_share_a_waiting_fsync(self) -> None:
        """
        Requests made before the fsync job starts (it is queued in the
        pool, not yet begun by a thread) share it: one job, one fsync, and
        all fire when it completes.
        """
        deferreds = [self.syncer.sync("/q/messages") for _ in range(5)]

        self.assertEqual(len(self.disk.jobs), 1)
        for d in deferreds:
            self.assertNoResult(d)
        self.disk.run_next()

        self.assertEqual(self.synced, ["/q/messages"])
        for d in deferreds:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.disk.jobs, [])

    def test_request_during_fsync_waits_for_the_next(self) -> None:
        """
        A request made while an fsync runs is not covered by it (its
        rename may have come after the fsync began): it waits for one
        more fsync, which every request made meanwhile shares, started
        when the running one ends.
        """
        later: list[Deferred] = []

        def fsync(directory: str) -> None:
            if not self.synced:
                # Requests arriving while the first fsync runs.
                later.extend(self.syncer.sync(directory) for _ in range(3))
                self.assertEqual(len(self.disk.jobs), 0, "no second fsync while one runs")
            self.synced.append(directory)

        self.syncer = DirectorySyncer(self.disk, fsync=fsync)
        first = self.syncer.sync("/q/messages")
        self.disk.run_next()

        self.assertIsNone(self.successResultOf(first))
        for d in later:
            self.assertNoResult(d)
        self.assertEqual(len(self.disk.jobs), 1)

        self.disk.run_next()
        for d in later:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.synced, ["/q/messages", "/q/messages"])
        self.assertEqual(self.disk.jobs, [])

    def test_directories_are_independent(self) -> None:
        """
        Different directories get their own fsyncs, which may run at the
        same time.
        """
        a = self.syncer.sync("/a")
        b = self.syncer.sync("/b")

        self.assertEqual(len(self.disk.jobs), 2)
        self.disk.run_next()
        self.disk.run_next()
        self.assertEqual(self.synced, ["/a", "/b"])
        self.assertIsNone(self.successResultOf(a))
        self.assertIsNone(self.successResultOf(b))

    def test_failure_reaches_every_waiter(self) -> None:
        """
        A failed fsync fails every request that shared it with its
        L{OSError}; the next request starts a new fsync.
        """

        def broken(directory: str) -> None:
            raise OSError(5, "Input/output error", directory)

        syncer = DirectorySyncer(self.disk, fsync=broken)
        deferreds = [syncer.sync("/q") for _ in range(2)]
        self.disk.run_next()

        self.assertEqual(self.disk.jobs, [])
        for d in deferreds:
            self.assertEqual(self.failureResultOf(d, OSError).value.errno, 5)
        syncer.sync("/q")
        self.assertEqual(len(self.disk.jobs), 1)

    def test_default_fsync(self) -> None:
        """
        By default the syncer uses L{fsync_directory}.
        """
        self.assertIs(DirectorySyncer(self.disk)._fsync, disk.fsync_directory)
