# -*- test-case-name: tests.test_accounts_users,tests.test_resolve_aliases -*-
"""
A configuration file held in memory and reloaded when it changes: the
users file and the aliases file (SPEC sections 3 and 4: "edits take effect
without a restart").

L{WatchedFile} does the common part: reading (blocking, at start-up, where
a mistake must stop the program), and reloading from the disk pool when
the file's signature (inode, size, mtime_ns) changed, or on SIGHUP. A
version with a mistake is refused with one log line naming the file and
the line, and the last good version stays in force; a refused or
unreadable version is reported once, not at every poll. Reloads run one at
a time, and a new version is put in force by one assignment (in the
subclass's L{WatchedFile.install}), so readers never see it half made.

A file missing at start-up is an empty version (a new installation has
no users yet; C{mailappliance user add} creates the file), with a warning.
A file that goes missing while the server runs (moved, deleted, a path
changed by mistake) is refused like a version with a mistake: the last
version stays in force, rather than every local recipient suddenly being
unknown and every sender getting a bounce.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

# What identifies a version of the file: (inode, size, mtime_ns); None for a
# missing file. An editor (or our CLI) that replaces the file changes the
# inode; one that rewrites it in place changes the size or the time.
Signature = tuple[int, int, int] | None
_NEVER_SEEN: Any = object()
_UNREADABLE: Any = object()


class FileLineError(Exception):
    """
    A watched file (users, aliases) has a mistake, or cannot be read.
    C{str()} is one line, C{path:line: reason}, for logs and the command
    line.

    @ivar path: the file.
    @ivar line: the 1-based line number of the mistake, or L{None} when the
        whole file is at fault (it cannot be read).
    @ivar reason: what is wrong, one line.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        super().__init__(path, line, reason)
        self.path = path
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path}:{self.line}: {self.reason}"


def signature_of(status: os.stat_result) -> tuple[int, int, int]:
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def stat_signature(path: str) -> Signature:
    """
    Blocking: the signature of the file now.

    @raise OSError: for errors other than a missing file.
    """
    try:
        return signature_of(os.stat(path))
    except FileNotFoundError:
        return None


class WatchedFile:
    """
    Subclasses set L{kind} and L{error_type}, and implement L{parse} and
    L{install}.

    @ivar path: the file (absolute), or L{None} for none at all (nothing is
        ever loaded).
    """

    kind = "file"
    # An exception type built as error_type(path, line, reason).
    error_type: type = ValueError

    def __init__(self, path: str | None, disk: Any, log: Logger | None) -> None:
        self.path = path
        self._disk = disk
        self._log = log if log is not None else Logger()
        # The version last looked at, good or refused.
        self._seen: Signature = _NEVER_SEEN
        # Whether the version in force was read from an existing file.
        self._from_file = False
        self._lock = DeferredLock()

    def parse(self, data: bytes) -> Any:
        """
        Parse a version of the file (pure; may run in the disk pool).

        @raise error_type: for a mistake, with its line.
        """
        raise NotImplementedError

    def install(self, parsed: Any) -> None:
        """
        Put a parsed version in force, in one assignment.
        """
        raise NotImplementedError

    def load(self) -> None:
        """
        Read the file now, blocking: for start-up and the command line. A
        missing file is an empty version, with a warning in the log.

        @raise error_type: if it cannot be read or has a mistake; what is in
            force is then unchanged.
        """
        if self.path is None:
            return
        signature, data = self._read()
        self._install(signature, self.parse(data))
        if signature is None:
            self._log.warn(  # noqa: G010 -- twisted.logger.Logger has no warning()
                '{kind} file={path} status=missing reason="no such file: none until it is created"',
                kind=self.kind, path=self.path,
            )

    def reload_if_changed(self) -> Deferred:
        """
        Reload the file if its signature changed since it was last looked
        at (a C{stat} in the disk pool).

        @return: a L{Deferred} firing with L{True} when a new version was
            put in force, L{False} otherwise. It does not fail.
        """
        if self.path is None:
            return succeed(False)
        return self._lock.run(self._reload_if_changed).addErrback(self._unexpected)

    def reload(self) -> Deferred:
        """
        Reload the file whatever its signature (SIGHUP).

        @return: a L{Deferred} firing as for L{reload_if_changed}.
        """
        if self.path is None:
            return succeed(False)
        return self._lock.run(self._reload).addErrback(self._unexpected)

    def _read(self) -> tuple[Signature, bytes]:
        """
        Blocking: the file's bytes and the signature of the version read
        (taken from the open file, so that it matches the bytes even while
        the file is being replaced); C{(None, b"")} for a missing file.
        """
        try:
            with open(self.path, "rb") as f:
                return signature_of(os.fstat(f.fileno())), f.read()
        except FileNotFoundError:
            return None, b""
        except OSError as e:
            reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
            raise self.error_type(self.path, None, f"cannot read the {self.kind} file: {reason}") from None

    def _read_and_parse(self) -> tuple[Signature, Any, Exception | None]:
        # Blocking. A mistake is returned, not raised, so that the caller
        # learns the signature of the refused version too.
        signature: Signature = _NEVER_SEEN
        try:
            signature, data = self._read()
            return signature, self.parse(data), None
        except self.error_type as e:
            return signature, None, e

    def _reload_if_changed(self) -> Deferred:
        def compare(signature: Signature) -> Any:
            if signature == self._seen:
                return False
            # Recorded before reading: if the read fails, the same broken
            # state is not reported again at the next poll.
            self._seen = signature
            return self._reload()

        def stat_failed(failure: Failure) -> bool:
            failure.trap(OSError)
            if self._seen is not _UNREADABLE:
                self._seen = _UNREADABLE
                self._log.error(
                    '{kind} file={path} status=unreadable reason="{reason}" (the previous version stays in force)',
                    kind=self.kind, path=self.path, reason=failure.value.strerror or failure.value,
                )
            return False

        return self._disk.run(stat_signature, self.path).addCallbacks(compare, stat_failed)

    def _reload(self) -> Deferred:
        def loaded(result: tuple[Signature, Any, Exception | None]) -> bool:
            signature, parsed, error = result
            if error is None and signature is None and self._from_file:
                self._seen = None
                self._log.error(
                    '{kind} file={path} status=missing reason="no such file" (the previous version stays in force)',
                    kind=self.kind, path=self.path,
                )
                return False
            if error is not None:
                if signature is not _NEVER_SEEN:
                    self._seen = signature
                self._log.error(
                    '{kind} file={path} line={line} status=refused reason="{reason}" '
                    "(the previous version stays in force)",
                    kind=self.kind, path=error.path, line=error.line if error.line is not None else "-",
                    reason=error.reason,
                )
                return False
            self._install(signature, parsed)
            return True

        return self._disk.run(self._read_and_parse).addCallback(loaded)

    def _install(self, signature: Signature, parsed: Any) -> None:
        self.install(parsed)
        self._seen = signature
        self._from_file = signature is not None

    def _unexpected(self, failure: Failure) -> bool:
        # A bug, or something like MemoryError: a reload runs from a timer
        # or a signal handler, where nobody would see a failed Deferred.
        self._log.failure("{kind} file={path} status=error", failure, kind=self.kind, path=self.path)
        return False
