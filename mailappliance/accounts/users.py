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

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mailappliance.accounts.edit import add_user, delete_user, list_users, set_password
from mailappliance.accounts.hashing import DUMMY_HASH, SCHEME_PLAIN, scheme_of, verify_password
from mailappliance.accounts.usersfile import AccountError, UserRecord, UsersFileError, parse_users
from mailappliance.address import Mailbox
from mailappliance.interfaces import IAccountStore
from mailappliance.watchedfile import WatchedFile

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

@implementer(IAccountStore)
class UsersDatabase(WatchedFile):
    """
    The accounts of the users file, reloaded when it changes (see
    L{WatchedFile}).

    @ivar path: the users file.
    """

    kind = "users"
    error_type = UsersFileError

    def __init__(self, path: str, disk: Any, log: Logger | None = None, password_checks: Any = None) -> None:
        """
        @param path: the users file (absolute). It need not exist: a missing
            file means no accounts.
        @param disk: a L{mailappliance.disk.DiskPool} (or
            L{mailappliance.disk.SynchronousDiskPool}): the file work of
            reloads runs there, and password checks without
            C{password_checks}.
        @param log: where to log; a module logger by default.
        @param password_checks: a
            L{mailappliance.accounts.verifier.PasswordChecks}, where the
            server verifies passwords (apart from the disk work).
        """
        super().__init__(path, disk, log if log is not None else _log)
        self.password_checks = password_checks
        # Replaced whole, never changed in place (see the module docstring).
        self._records: dict[str, UserRecord] = {}
        # (address, stored hash) of the {PLAIN} lines already warned about,
        # so that a reload warns only about new ones.
        self._plain_warned: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        """
        @return: the number of accounts in force.
        """
        return len(self._records)

    def lookup(self, mailbox: Mailbox) -> UserRecord | None:
        """
        See L{IAccountStore.lookup}.

        @param mailbox: an address; compared by L{Mailbox.key}.
        @return: its record, or L{None} if it has no account.
        """
        return self._records.get(mailbox.key)

    def check_password(self, mailbox: Mailbox, password: bytes) -> Deferred:
        """
        See L{IAccountStore.check_password}. The hash is verified in
        L{password_checks} (a L{mailappliance.accounts.verifier.PasswordChecks},
        which may fail with its C{TooManyLogins}), else in the disk pool. For an address without an account, the password is
        verified against L{DUMMY_HASH} all the same, so that the answer
        takes as long as for an account (with the default scheme) and does
        not tell who has one.

        @param mailbox: the login name, parsed.
        @param password: the password as given, L{bytes}.
        @return: a L{Deferred} firing with L{True} if the account exists
            and the password matches, else L{False}.
        """
        record = self.lookup(mailbox)
        checks = self.password_checks if self.password_checks is not None else self._disk
        if record is None:
            return checks.run(verify_password, DUMMY_HASH, password).addCallback(lambda _: False)
        return checks.run(verify_password, record.password_hash, password)

    def addresses(self) -> list[str]:
        """
        @return: the L{Mailbox.key} of every account, in file order.
        """
        return list(self._records)

    def parse(self, data: bytes) -> dict[str, UserRecord]:
        return parse_users(data, self.path)

    def install(self, records: dict[str, UserRecord]) -> None:
        # The one assignment that makes a version current.
        self._records = records
        self._log.info("users file={path} status=loaded users={count}", path=self.path, count=len(records))
        plain = set()
        for key, record in records.items():
            if scheme_of(record.password_hash) == SCHEME_PLAIN:
                plain.add((key, record.password_hash))
                if (key, record.password_hash) not in self._plain_warned:
                    self._log.warn(  # noqa: G010 -- twisted.logger.Logger has no warning()
                        "users file={path} line={line} user={user} status=plain-text-password "
                        'reason="store a hash: mailappliance user passwd"',
                        path=self.path,
                        line=record.line_number,
                        user=key,
                    )
        self._plain_warned = plain
