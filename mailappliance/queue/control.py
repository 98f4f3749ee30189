# -*- test-case-name: tests.test_queue_control -*-
"""
Steering the queue from the command line, with the server running or not.

  - The running server holds an exclusive C{flock} on
    C{DATA_DIR/queue/server.lock} for its whole life (L{ServerLock}); the
    kernel drops it when the process dies, however it dies. A second server
    on the same data folder refuses to start; the CLI uses the lock to tell
    whether a server is running (L{server_running}).
  - While a server runs, C{mailappliance queue flush|delete} write a
    command file into C{DATA_DIR/queue/control/} (durably, by rename, like
    the drop folder); the server looks every second (L{ControlFolder}),
    carries the command out through the queue manager and removes the
    file, which is how the CLI knows it was done. Format, version 1: one
    JSON object C{{"version": 1, "command": "flush"|"delete", "ids": [...]}}
    (an empty C{ids} for flush means every message). Names start with the
    time in nanoseconds, so commands run in the order they were written.
    A hidden temporary file older than L{STALE_TEMPORARY_AGE} is what a CLI
    that died while writing left behind; the server removes it.
  - While no server runs, the CLI works on the files itself (see
    L{mailappliance.cli.queue}), holding the same lock so that a server
    cannot start in the middle.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import time
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailappliance.disk import fsync_directory, remove_old_files, write_all
from mailappliance.queue.ids import is_queue_id

LOCK_NAME = "server.lock"
CONTROL_DIR = "control"
COMMAND_SUFFIX = ".cmd"
COMMANDS = ("flush", "delete")
# A command file is read up to this size (a queue id takes 19 bytes of
# JSON: about 880,000 ids); write_command refuses a larger one.
MAX_COMMAND_SIZE = 16 * 1024 * 1024
# Writing a command takes milliseconds; a temporary file this old belongs
# to a CLI that died.
STALE_TEMPORARY_AGE = 3600
TEMPORARY_SUFFIX = ".tmp"

_default_log = Logger(namespace="mailappliance.queue")


class ServerLock:
    """
    The lock a running server holds on its queue folder.
    """

    def __init__(self, queue_dir: str) -> None:
        self.path = os.path.join(queue_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """
        Take the lock without waiting (blocking I/O: at start-up, before the
        reactor runs, or in the CLI).

        @return: L{False} if another process holds it.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        os.ftruncate(fd, 0)
        write_all(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def server_running(queue_dir: str) -> bool:
    """
    Whether a server holds the queue's lock now.
    """
    if not os.path.isdir(queue_dir):
        return False
    lock = ServerLock(queue_dir)
    if lock.acquire():
        lock.release()
        return False
    return True


def write_command(queue_dir: str, command: str, ids: list[str]) -> str:
    """
    Leave a command for the running server (blocking, durable).

    @return: the command file's path.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    data = json.dumps({"version": 1, "command": command, "ids": list(ids)}).encode()
    if len(data) > MAX_COMMAND_SIZE:
        raise ValueError(f"too many queue ids for one command ({len(ids)}); give fewer at a time")
    directory = os.path.join(queue_dir, CONTROL_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = f"{time.time_ns():020d}-{secrets.token_hex(6)}{COMMAND_SUFFIX}"
    tmp = os.path.join(directory, "." + name + TEMPORARY_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    path = os.path.join(directory, name)
    os.rename(tmp, path)
    fsync_directory(directory)
    return path


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(COMMAND_SUFFIX + TEMPORARY_SUFFIX)


def _read_commands(directory: str) -> tuple[list[tuple[str, dict | None]], list[str]]:
    """
    The waiting commands, oldest first, each with its parsed content (or
    L{None} when it is not a valid version-1 command), and the stale
    temporary files removed on the way (blocking).
    """
    removed = remove_old_files(directory, STALE_TEMPORARY_AGE, time.time(), _is_temporary)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(COMMAND_SUFFIX) and not n.startswith("."))
    except FileNotFoundError:
        return [], removed
    result = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_COMMAND_SIZE + 1)
            obj = json.loads(data.decode("utf-8")) if len(data) <= MAX_COMMAND_SIZE else None
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, ValueError):
            obj = None
        if not isinstance(obj, dict) or obj.get("version") != 1 or obj.get("command") not in COMMANDS \
                or not isinstance(obj.get("ids"), list) or not all(isinstance(i, str) for i in obj["ids"]):
            obj = None
        result.append((path, obj))
    return result, removed


class ControlFolder:
    """
    Carries out the commands left in C{queue/control/}.

    @param manager: the L{mailappliance.queue.manager.QueueManager}.
    """

    def __init__(self, queue_dir: str, manager: Any, disk: Any, log: Logger | None = None) -> None:
        self.directory = os.path.join(queue_dir, CONTROL_DIR)
        self.manager = manager
        self.disk = disk
        self.log = log if log is not None else _default_log
        # Entries that could not be removed: done (or ignored) once, then
        # skipped, so that they neither run again nor hold up the others.
        self._stuck: set[str] = set()

    @defer.inlineCallbacks
    def poll(self):
        """
        Run every waiting command, then remove its file. Never fails.
        """
        try:
            commands, removed = yield self.disk.run(_read_commands, self.directory)
            for path in removed:
                self.log.info("file={path} status=removed reason=\"temporary file of a command never finished\"",
                              path=path)
            for path, command in commands:
                if path in self._stuck:
                    continue
                if command is None:
                    self.log.error("file={path} status=ignored reason=\"not a version-1 command\"", path=path)
                else:
                    ids = [i for i in command["ids"] if is_queue_id(i)]
                    if command["command"] == "flush":
                        # No ids means every message; ids that are all
                        # invalid mean none.
                        done = self.manager.flush(ids or None) if ids or not command["ids"] else []
                    else:
                        done = yield self.manager.delete(ids)
                    self.log.info("event=admin command={command} ids={ids}", command=command["command"],
                                  ids=",".join(done) or "-")
                try:
                    yield self.disk.run(_unlink_quietly, path)
                except OSError:
                    self._stuck.add(path)
                    self.log.failure("file={path} status=error reason=\"cannot remove; skipped from now on\"",
                                     path=path)
        except Exception:
            self.log.failure("event=admin status=error")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
