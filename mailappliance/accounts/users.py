# -*- test-case-name: tests.test_accounts_users -*-
"""
The users file in service: the account store of the server, held in
memory and reloaded when the file changes (SPEC section 3).

The syntax lives in L{mailappliance.accounts.usersfile} and the command
line's editing functions in L{mailappliance.accounts.edit}; both are
re-exported here, so that C{mailappliance.accounts.users} is the one name
to import.

Reloading: the service calls L{UsersDatabase.reload_if_changed} from time
to time and L{UsersDatabase.reload} on SIGHUP. A new version replaces the
old one in a single assignment in the reactor thread, so a lookup sees
either the old accounts or the new ones, never a mixture. A version with a
mistake is refused: the last good version stays in force and the mistake
is logged once, with the file and line.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.accounts.edit import add_user, delete_user, list_users, set_password
from mailappliance.accounts.hashing import DUMMY_HASH, SCHEME_PLAIN, scheme_of, verify_password
from mailappliance.accounts.usersfile import AccountError, UserRecord, UsersFileError, parse_users
from mailappliance.address import Mailbox
from mailappliance.interfaces import IAccountStore

__all__ = [
    "AccountError",
    "UserRecord",
    "UsersDatabase",
    "UsersFileError",
    "add_user",
    "delete_user",
    "list_users",
    "parse_users",
    "set_password",
]

_log = Logger()

# What identifies a version of the file: (inode, size, mtime_ns); None for a
# missing file. The editing functions replace the file (new inode); an
# editor that rewrites it in place changes the size or the time.
Signature = tuple[int, int, int] | None
_NEVER_SEEN: Any = object()
_UNREADABLE: Any = object()


def _signature_of(status: os.stat_result) -> tuple[int, int, int]:
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def _stat(path: str) -> Signature:
    """
    Blocking: the signature of the file now.

    @raise OSError: for errors other than a missing file.
    """
    try:
        return _signature_of(os.stat(path))
    except FileNotFoundError:
        return None


def _read(path: str) -> tuple[Signature, bytes]:
    """
    Blocking: read the file and the signature of the version read (taken
    from the open file, so that it matches the bytes even while the file is
    being replaced).

    @return: C{(signature, data)}; C{(None, b"")} for a missing file.
    @raise UsersFileError: if the file exists but cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return _signature_of(os.fstat(f.fileno())), f.read()
    except FileNotFoundError:
        return None, b""
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        raise UsersFileError(path, None, f"cannot read the users file: {reason}") from None


def _read_and_parse(path: str) -> tuple[Signature, dict[str, UserRecord] | None, UsersFileError | None]:
    """
    Blocking: read and parse the file. A mistake is returned, not raised,
    so that the caller learns the signature of the refused version too.
    """
    signature: Signature = _NEVER_SEEN
    try:
        signature, data = _read(path)
        return signature, parse_users(data, path), None
    except UsersFileError as e:
        return signature, None, e


@implementer(IAccountStore)
class UsersDatabase:
    """
    The accounts of the users file.

    @ivar path: the users file.
    """

    def __init__(self, path: str, disk: Any, log: Logger | None = None) -> None:
        """
        @param path: the users file (absolute). It need not exist: a missing
            file means no accounts.
        @param disk: a L{mailappliance.disk.DiskPool} (or
            L{mailappliance.disk.SynchronousDiskPool}): password checks and
            the file work of reloads run there.
        @param log: where to log; a module logger by default.
        """
        self.path = path
        self._disk = disk
        self._log = log if log is not None else _log
        # Replaced whole, never changed in place (see the module docstring).
        self._records: dict[str, UserRecord] = {}
        # The version last looked at, good or refused: a refused version is
        # reported once, not at every poll.
        self._seen: Signature = _NEVER_SEEN
        self._lock = DeferredLock()

    def __len__(self) -> int:
        """
        @return: the number of accounts in force.
        """
        return len(self._records)

    def load(self) -> None:
        """
        Read the file now, blocking: for start-up, where a mistake must stop
        the program.

        @raise UsersFileError: if the file cannot be read or has a mistake;
            the accounts in force are then unchanged.
        """
        signature, data = _read(self.path)
        self._install(signature, parse_users(data, self.path))

    def lookup(self, mailbox: Mailbox) -> UserRecord | None:
        """
        See L{IAccountStore.lookup}.

        @param mailbox: an address; compared by L{Mailbox.key}.
        @return: its record, or L{None} if it has no account.
        """
        return self._records.get(mailbox.key)

    def check_password(self, mailbox: Mailbox, password: bytes) -> Deferred:
        """
        See L{IAccountStore.check_password}. The hash is verified in the
        disk pool. For an address without an account, the password is
        verified against L{DUMMY_HASH} all the same, so that the answer
        takes as long as for an account (with the default scheme) and does
        not tell who has one.

        @param mailbox: the login name, parsed.
        @param password: the password as given, L{bytes}.
        @return: a L{Deferred} firing with L{True} if the account exists
            and the password matches, else L{False}.
        """
        record = self.lookup(mailbox)
        if record is None:
            return self._disk.run(verify_password, DUMMY_HASH, password).addCallback(lambda _: False)
        return self._disk.run(verify_password, record.password_hash, password)

    def addresses(self) -> list[str]:
        """
        @return: the L{Mailbox.key} of every account, in file order.
        """
        return list(self._records)

    def reload_if_changed(self) -> Deferred:
        """
        Reload the file if it changed since it was last looked at: compare
        (inode, size, mtime_ns) of a C{stat}, made in the disk pool.

        @return: a L{Deferred} firing with L{True} when a new version was
            put in force, L{False} otherwise (unchanged, or refused because
            of a mistake, which is logged with file and line while the last
            good version stays in force). It does not fail.
        """
        return self._lock.run(self._reload_if_changed).addErrback(self._unexpected)

    def reload(self) -> Deferred:
        """
        Reload the file whatever its signature (SIGHUP).

        @return: a L{Deferred} firing as for L{reload_if_changed}.
        """
        return self._lock.run(self._reload).addErrback(self._unexpected)

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
                    'users file={path} status=unreadable reason="{reason}" '
                    "(the previous version stays in force)",
                    path=self.path,
                    reason=failure.value.strerror or failure.value,
                )
            return False

        return self._disk.run(_stat, self.path).addCallbacks(compare, stat_failed)

    def _reload(self) -> Deferred:
        def loaded(result: tuple[Signature, dict[str, UserRecord] | None, UsersFileError | None]) -> bool:
            signature, records, error = result
            if error is not None:
                if signature is not _NEVER_SEEN:
                    self._seen = signature
                self._log.error(
                    "users file={path} line={line} status=refused "
                    'reason="{reason}" (the previous version stays in force)',
                    path=error.path,
                    line=error.line if error.line is not None else "-",
                    reason=error.reason,
                )
                return False
            assert records is not None
            self._install(signature, records)
            return True

        return self._disk.run(_read_and_parse, self.path).addCallback(loaded)

    def _unexpected(self, failure: Failure) -> bool:
        # A bug, or something like MemoryError: a reload runs from a timer
        # or a signal handler, where nobody would see a failed Deferred.
        self._log.failure("users file={path} status=error", failure, path=self.path)
        return False

    def _install(self, signature: Signature, records: dict[str, UserRecord]) -> None:
        # The one assignment that makes a version current.
        self._records = records
        self._seen = signature
        self._log.info("users file={path} status=loaded users={count}", path=self.path, count=len(records))
        for record in records.values():
            if scheme_of(record.password_hash) == SCHEME_PLAIN:
                self._log.warn(
                    "users file {path} line {line} stores a plain-text password",
                    path=self.path,
                    line=record.line_number,
                )
