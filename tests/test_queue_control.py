# -*- test-case-name: tests.test_queue_control -*-
"""
Tests for L{mailappliance.queue.control}: the server's lock on the queue
folder, the command files the CLI leaves for a running server, and the
L{ControlFolder} that carries them out.

The lock is probed from a second open file description (C{os.open} plus
C{fcntl.flock} in the test), which C{flock} treats like another process.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from types import SimpleNamespace

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.disk import SynchronousDiskPool
from mailappliance.queue import control
from mailappliance.queue.control import (
    STALE_TEMPORARY_AGE,
    ControlFolder,
    ServerLock,
    server_running,
    write_command,
)

QID_A = "0000000000000AAA"
QID_B = "0000000000000BBB"
QID_C = "0000000000000CCC"
COMMAND_NAME = re.compile(r"\A[0-9]{20}-[0-9a-f]{12}\.cmd\Z")


def flock_free(path: str) -> bool:
    """
    Whether another open file description can take an exclusive C{flock}
    on C{path} now (it is released again at once).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


class LockTests(SynchronousTestCase):
    def setUp(self):
        self.queue_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.queue_dir)
        self.path = os.path.join(self.queue_dir, "server.lock")

    def hold_elsewhere(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.addCleanup(os.close, fd)
        return fd

    def test_acquire_holds_exclusive_flock(self):
        """
        L{ServerLock.acquire} takes an exclusive C{flock} on
        C{queue/server.lock} (created with mode 0600, holding the pid), on a
        close-on-exec descriptor; another open file description cannot
        take it while it is held.
        """
        lock = ServerLock(self.queue_dir)
        self.addCleanup(lock.release)
        self.assertEqual(lock.path, self.path)
        self.assertIs(lock.acquire(), True)
        self.assertIs(flock_free(self.path), False)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n".encode())
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertEqual(fcntl.fcntl(lock._fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fcntl.FD_CLOEXEC)

    def test_release_frees_the_lock(self):
        """
        After L{ServerLock.release} the lock can be taken by someone else;
        the file stays, and a second release does nothing.
        """
        lock = ServerLock(self.queue_dir)
        self.assertIs(lock.acquire(), True)
        lock.release()
        self.assertIs(flock_free(self.path), True)
        self.assertTrue(os.path.exists(self.path))
        lock.release()
        self.assertIs(flock_free(self.path), True)

    def test_second_lock_refused(self):
        """
        While one L{ServerLock} holds the lock, another on the same folder
        gets L{False}, keeps no descriptor open and leaves the holder's pid
        in the file; once the first is released the second gets it.
        """
        first, second = ServerLock(self.queue_dir), ServerLock(self.queue_dir)
        self.addCleanup(first.release)
        self.addCleanup(second.release)
        self.assertIs(first.acquire(), True)
        with open(self.path, "wb") as f:
            f.write(b"4242\n")
        open_fds = len(os.listdir("/proc/self/fd"))
        self.assertIs(second.acquire(), False)
        self.assertEqual(len(os.listdir("/proc/self/fd")), open_fds)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"4242\n")
        second.release()  # a refused lock has nothing to release
        self.assertIs(flock_free(self.path), False)
        first.release()
        self.assertIs(second.acquire(), True)

    def test_refused_when_held_elsewhere(self):
        """
        A C{flock} held through another open file description (as by
        another process) makes L{ServerLock.acquire} return L{False}.
        """
        fd = self.hold_elsewhere()
        self.assertIs(ServerLock(self.queue_dir).acquire(), False)
        fcntl.flock(fd, fcntl.LOCK_UN)
        lock = ServerLock(self.queue_dir)
        self.addCleanup(lock.release)
        self.assertIs(lock.acquire(), True)

    def test_other_errors_raised(self):
        """
        An error other than contention, such as a missing queue folder,
        is raised, not reported as a lock held elsewhere.
        """
        lock = ServerLock(os.path.join(self.queue_dir, "missing"))
        error = self.assertRaises(FileNotFoundError, lock.acquire)
        self.assertEqual(error.errno, errno.ENOENT)

    def test_server_running(self):
        """
        L{server_running} is L{True} exactly while the lock is held, by a
        L{ServerLock} or another open file description, and leaves the lock
        free when it finds no server.
        """
        self.assertIs(server_running(self.queue_dir), False)
        self.assertIs(flock_free(self.path), True)
        lock = ServerLock(self.queue_dir)
        self.assertIs(lock.acquire(), True)
        self.assertIs(server_running(self.queue_dir), True)
        lock.release()
        self.assertIs(server_running(self.queue_dir), False)
        self.hold_elsewhere()
        self.assertIs(server_running(self.queue_dir), True)

    def test_server_running_without_queue_folder(self):
        """
        L{server_running} is L{False} for a queue folder that does not
        exist, and creates nothing.
        """
        missing = os.path.join(self.queue_dir, "missing")
        self.assertIs(server_running(missing), False)
        self.assertFalse(os.path.exists(missing))


class WriteCommandTests(SynchronousTestCase):
    def setUp(self):
        self.queue_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.queue_dir)
        self.directory = os.path.join(self.queue_dir, "control")

    def test_command_file(self):
        """
        L{write_command} creates C{queue/control/} (0700) and one command
        file (0600) named by time, holding the version-1 JSON command; no
        temporary file is left.
        """
        path = write_command(self.queue_dir, "delete", [QID_A, QID_B])
        name = os.path.basename(path)
        self.assertEqual(os.path.dirname(path), self.directory)
        self.assertRegex(name, COMMAND_NAME)
        self.assertEqual(os.listdir(self.directory), [name])
        with open(path, "rb") as f:
            self.assertEqual(json.loads(f.read()), {"version": 1, "command": "delete", "ids": [QID_A, QID_B]})
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.directory).st_mode & 0o777, 0o700)

    def test_durable_by_rename(self):
        """
        The file is written and fsynced under a hidden temporary name, then
        renamed, whole, to its final name, and the folder is fsynced after
        the rename.
        """
        events = []
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd):
            events.append("fsync")
            real_fsync(fd)

        def rename(source, destination):
            with open(source, "rb") as f:
                events.append(("rename", source, destination, json.loads(f.read())))
            real_rename(source, destination)

        self.patch(os, "fsync", fsync)
        self.patch(os, "rename", rename)
        self.patch(control, "fsync_directory", lambda d: events.append(("fsync_directory", d)))
        path = write_command(self.queue_dir, "flush", [])
        tmp = os.path.join(self.directory, "." + os.path.basename(path) + ".tmp")
        self.assertEqual(events, [
            "fsync",
            ("rename", tmp, path, {"version": 1, "command": "flush", "ids": []}),
            ("fsync_directory", self.directory),
        ])
        self.assertEqual(os.listdir(self.directory), [os.path.basename(path)])

    def test_name_from_clock(self):
        """
        The name starts with the time in nanoseconds, 20 digits, so that
        names sort in the order commands were written, even two written in
        the same millisecond.
        """
        now = [1700000000123456789]

        def time_ns():
            now[0] += 1
            return now[0]

        self.patch(control, "time", SimpleNamespace(time_ns=time_ns))
        first = write_command(self.queue_dir, "flush", [])
        second = write_command(self.queue_dir, "delete", [QID_A])
        self.assertTrue(os.path.basename(first).startswith("01700000000123456790-"), first)
        self.assertTrue(os.path.basename(second).startswith("01700000000123456791-"), second)
        self.assertLess(os.path.basename(first), os.path.basename(second))

    def test_too_large(self):
        """
        A command larger than the server reads (L{MAX_COMMAND_SIZE}) is
        refused with L{ValueError} before anything is written.
        """
        self.patch(control, "MAX_COMMAND_SIZE", 100)
        error = self.assertRaises(ValueError, write_command, self.queue_dir, "delete", [QID_A] * 10)
        self.assertIn("too many queue ids for one command (10)", str(error))
        self.assertFalse(os.path.exists(os.path.join(self.queue_dir, "control")))

    def test_unknown_command(self):
        """
        An unknown command raises L{ValueError} and writes nothing.
        """
        self.assertRaises(ValueError, write_command, self.queue_dir, "purge", [])
        self.assertFalse(os.path.exists(self.directory))


class FakeQueueManager:
    """
    Records C{flush} and C{delete} calls as L{QueueManager} takes them.

    @ivar held: when a list, C{delete} returns unfired L{Deferred}s,
        appended here with the ids they will fire with.
    @ivar failures: method name to an exception its next call fails with
        (C{flush} raises it, C{delete} returns it as a failed L{Deferred}).
    """

    def __init__(self, queued=()):
        self.queued = list(queued)
        self.calls = []
        self.held = None
        self.failures = {}

    def flush(self, queue_ids=None):
        self.calls.append(("flush", queue_ids))
        if "flush" in self.failures:
            raise self.failures.pop("flush")
        return list(self.queued) if queue_ids is None else [q for q in queue_ids if q in self.queued]

    def delete(self, queue_ids):
        self.calls.append(("delete", queue_ids))
        if "delete" in self.failures:
            return fail(self.failures.pop("delete"))
        removed = [q for q in queue_ids if q in self.queued]
        self.queued = [q for q in self.queued if q not in removed]
        if self.held is not None:
            d = Deferred()
            self.held.append((d, removed))
            return d
        return succeed(removed)


class ControlFolderTests(SynchronousTestCase):
    def setUp(self):
        self.queue_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.queue_dir)
        self.directory = os.path.join(self.queue_dir, "control")
        self.manager = FakeQueueManager([QID_A, QID_B])
        self.events = []
        log = Logger(namespace="test", observer=self.events.append)
        self.folder = ControlFolder(self.queue_dir, self.manager, SynchronousDiskPool(), log)
        self.clock_ns = 1700000000000000000
        self.patch(control, "time", SimpleNamespace(time=self.now, time_ns=self.tick))

    def tick(self):
        self.clock_ns += 1
        return self.clock_ns

    def now(self):
        return self.clock_ns / 1e9

    def put(self, name, data):
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def poll(self):
        self.assertIsNone(self.successResultOf(self.folder.poll()))

    def logged(self):
        return [(e["log_level"], formatEvent(e)) for e in self.events]

    def test_no_control_folder(self):
        """
        Without C{queue/control/}, polling does nothing and logs nothing.
        """
        self.poll()
        self.assertEqual((self.manager.calls, self.events), ([], []))

    def test_commands_run_once_in_order(self):
        """
        Each waiting command is carried out once, in the order written, and
        logged with the ids the manager acted on ("-" for none); then its
        file is removed, and a second poll does nothing.
        """
        write_command(self.queue_dir, "flush", [QID_B, QID_C])
        write_command(self.queue_dir, "delete", [QID_A, QID_C])
        write_command(self.queue_dir, "flush", [])
        write_command(self.queue_dir, "delete", [QID_C])
        self.poll()
        self.assertEqual(self.manager.calls, [
            ("flush", [QID_B, QID_C]), ("delete", [QID_A, QID_C]), ("flush", None), ("delete", [QID_C])])
        self.assertEqual(self.logged(), [
            (LogLevel.info, f"event=admin command=flush ids={QID_B}"),
            (LogLevel.info, f"event=admin command=delete ids={QID_A}"),
            (LogLevel.info, f"event=admin command=flush ids={QID_B}"),
            (LogLevel.info, "event=admin command=delete ids=-"),
        ])
        self.assertEqual(os.listdir(self.directory), [])
        self.poll()
        self.assertEqual((len(self.manager.calls), len(self.events)), (4, 4))

    def test_file_removed_after_delete_done(self):
        """
        The command file stays until the manager's deletion has finished:
        its removal is what tells the CLI the command was done.
        """
        self.manager.held = []
        path = write_command(self.queue_dir, "delete", [QID_A])
        d = self.folder.poll()
        self.assertNoResult(d)
        self.assertTrue(os.path.exists(path))
        self.assertEqual(self.events, [])
        done, removed = self.manager.held[0]
        done.callback(removed)
        self.assertIsNone(self.successResultOf(d))
        self.assertFalse(os.path.exists(path))
        self.assertEqual(self.logged(), [(LogLevel.info, f"event=admin command=delete ids={QID_A}")])

    def test_ids_not_queue_ids_dropped(self):
        """
        Ids that are not queue ids are left out before the manager sees
        them; a flush whose ids are all left out flushes nothing (only an
        empty C{ids} means every message).
        """
        write_command(self.queue_dir, "delete", ["../x", QID_A.lower(), QID_A])
        write_command(self.queue_dir, "flush", ["nonsense"])
        write_command(self.queue_dir, "flush", [])
        self.poll()
        self.assertEqual(self.manager.calls, [("delete", [QID_A]), ("flush", None)])
        self.assertEqual(self.logged()[1], (LogLevel.info, "event=admin command=flush ids=-"))
        self.assertEqual(self.logged()[2], (LogLevel.info, f"event=admin command=flush ids={QID_B}"))

    def test_malformed_commands_ignored(self):
        """
        A file that is not a version-1 command is logged as ignored, at
        error level with its path, and removed without reaching the
        manager; the commands after it still run.
        """
        bad = [
            b"", b"not json", b"\xff\xfe{}", b"[]", b'"flush"',
            b'{"command": "flush", "ids": []}',
            b'{"version": 2, "command": "flush", "ids": []}',
            b'{"version": "1", "command": "flush", "ids": []}',
            b'{"version": 1, "command": "purge", "ids": []}',
            b'{"version": 1, "command": "delete"}',
            b'{"version": 1, "command": "delete", "ids": "' + QID_A.encode() + b'"}',
            b'{"version": 1, "command": "delete", "ids": [1]}',
        ]
        paths = [self.put(f"0000-{n:02d}.cmd", data) for n, data in enumerate(bad)]
        write_command(self.queue_dir, "delete", [QID_A])
        self.poll()
        self.assertEqual(self.manager.calls, [("delete", [QID_A])])
        self.assertEqual(self.logged(), [
            (LogLevel.error, f'file={p} status=ignored reason="not a version-1 command"') for p in paths
        ] + [(LogLevel.info, f"event=admin command=delete ids={QID_A}")])
        self.assertEqual(os.listdir(self.directory), [])

    def test_unreadable_command_ignored(self):
        """
        A command file that cannot be read (here a symbolic link to
        itself) is logged as ignored and removed like a malformed one.
        """
        os.makedirs(self.directory)
        path = os.path.join(self.directory, "0000-loop.cmd")
        os.symlink("0000-loop.cmd", path)
        self.poll()
        self.assertEqual(self.manager.calls, [])
        self.assertEqual(self.logged(), [
            (LogLevel.error, f'file={path} status=ignored reason="not a version-1 command"')])
        self.assertEqual(os.listdir(self.directory), [])

    def test_vanished_command_skipped(self):
        """
        A command file that disappears between the listing and the
        reading is skipped without a log line, and the others still run.
        """
        listdir = os.listdir
        self.patch(os, "listdir", lambda d: listdir(d) + ["0000-gone.cmd"])
        write_command(self.queue_dir, "flush", [QID_A])
        self.poll()
        self.assertEqual(self.manager.calls, [("flush", [QID_A])])
        self.assertEqual(self.logged(), [(LogLevel.info, f"event=admin command=flush ids={QID_A}")])

    def test_other_files_left_alone(self):
        """
        Hidden files (a command still being written) and files without the
        C{.cmd} suffix are neither run nor removed.
        """
        data = json.dumps({"version": 1, "command": "flush", "ids": []}).encode()
        self.put(".0001-x.cmd.tmp", data)
        self.put(".0001-x.cmd", data)
        self.put("0001-x.cmd.tmp", data)
        self.put("README", data)
        self.poll()
        self.assertEqual((self.manager.calls, self.events), ([], []))
        self.assertEqual(sorted(os.listdir(self.directory)),
                         [".0001-x.cmd", ".0001-x.cmd.tmp", "0001-x.cmd.tmp", "README"])

    def test_stale_temporary_files_removed(self):
        """
        A command's hidden temporary file older than an hour (a CLI that
        died while writing it) is removed and logged; a younger one (a CLI
        writing now) and other hidden files are left alone, and nothing is
        run.
        """
        data = json.dumps({"version": 1, "command": "flush", "ids": []}).encode()
        stale = self.put(".00000000000000000001-ab.cmd.tmp", data)
        young = self.put(".00000000000000000002-cd.cmd.tmp", data)
        other = self.put(".notes.tmp", data)
        now = self.now()
        os.utime(stale, (now - STALE_TEMPORARY_AGE - 1, now - STALE_TEMPORARY_AGE - 1))
        os.utime(young, (now - STALE_TEMPORARY_AGE + 60, now - STALE_TEMPORARY_AGE + 60))
        os.utime(other, (now - 10 * STALE_TEMPORARY_AGE, now - 10 * STALE_TEMPORARY_AGE))
        self.poll()
        self.assertEqual(sorted(os.listdir(self.directory)), [".00000000000000000002-cd.cmd.tmp", ".notes.tmp"])
        self.assertEqual(self.manager.calls, [])
        self.assertEqual(self.logged(), [
            (LogLevel.info, f'file={stale} status=removed reason="temporary file of a command never finished"')])

    def test_manager_failure_retried(self):
        """
        When the manager fails, poll still succeeds: the failure is logged
        (critical, with the exception), the commands done before it are
        removed, and the failed one and those after it stay, to be run at
        the next poll.
        """
        first = write_command(self.queue_dir, "flush", [QID_A])
        second = write_command(self.queue_dir, "delete", [QID_B])
        third = write_command(self.queue_dir, "flush", [])
        self.manager.failures["delete"] = RuntimeError("disk full")
        self.poll()
        self.assertEqual(self.manager.calls, [("flush", [QID_A]), ("delete", [QID_B])])
        self.assertEqual(self.logged(), [(LogLevel.info, f"event=admin command=flush ids={QID_A}"),
                                         (LogLevel.critical, "event=admin status=error")])
        self.assertEqual(self.events[1]["log_failure"].value.args, ("disk full",))
        self.assertEqual([os.path.exists(p) for p in (first, second, third)], [False, True, True])
        self.poll()
        self.assertEqual(self.manager.calls[2:], [("delete", [QID_B]), ("flush", None)])
        self.assertEqual(self.logged()[2:], [(LogLevel.info, f"event=admin command=delete ids={QID_B}"),
                                             (LogLevel.info, f"event=admin command=flush ids={QID_A}")])
        self.assertEqual(os.listdir(self.directory), [])

    def test_flush_raising_logged(self):
        """
        A C{flush} that raises is logged like a failed C{delete}, and its
        command stays for the next poll.
        """
        path = write_command(self.queue_dir, "flush", [])
        self.manager.failures["flush"] = ValueError("boom")
        self.poll()
        self.assertEqual(self.logged(), [(LogLevel.critical, "event=admin status=error")])
        self.assertTrue(self.events[0]["log_failure"].check(ValueError))
        self.assertTrue(os.path.exists(path))

    def test_unremovable_entry_never_fails(self):
        """
        An entry that can be neither read nor removed (a directory named
        like a command) is logged as ignored, then its failed removal is
        logged as an error, once; poll itself still succeeds, the entry
        stays and later polls skip it quietly.
        """
        os.makedirs(os.path.join(self.directory, "0000-dir.cmd"))
        path = os.path.join(self.directory, "0000-dir.cmd")
        self.poll()
        self.poll()
        self.assertEqual(self.logged(), [
            (LogLevel.error, f'file={path} status=ignored reason="not a version-1 command"'),
            (LogLevel.critical, f'file={path} status=error reason="cannot remove; skipped from now on"')])
        self.assertTrue(self.events[1]["log_failure"].check(IsADirectoryError))
        self.assertTrue(os.path.isdir(path))

    def test_unremovable_entry_does_not_block_others(self):
        """
        A command written after an entry that cannot be removed is still
        carried out.
        """
        os.makedirs(os.path.join(self.directory, "0000-dir.cmd"))
        write_command(self.queue_dir, "delete", [QID_A])
        self.poll()
        self.poll()
        self.assertEqual(self.manager.calls, [("delete", [QID_A])])

    def test_large_command_carried_out(self):
        """
        Every command L{write_command} writes is carried out, however many
        ids it names.
        """
        ids = [f"{n:016d}" for n in range(4000)]
        self.manager.queued = list(ids)
        self.assertGreater(os.path.getsize(write_command(self.queue_dir, "delete", ids)), 64 * 1024)
        self.poll()
        self.assertEqual([(name, len(given)) for name, given in self.manager.calls], [("delete", 4000)])
        self.assertEqual(self.manager.calls[0][1], ids)
