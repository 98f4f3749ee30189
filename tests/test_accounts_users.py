# -*- test-case-name: tests.test_accounts_users -*-
"""
Tests for L{mailappliance.accounts.users}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailappliance.accounts import edit
from mailappliance.accounts.hashing import DUMMY_HASH, Argon2Parameters, hash_password, verify_password
from mailappliance.accounts.users import UserRecord, UsersDatabase, UsersFileError
from mailappliance.watchedfile import stat_signature
from mailappliance.address import Mailbox, parse_mailbox
from mailappliance.disk import write_file_durably
from mailappliance.interfaces import IAccountStore

CHEAP_ARGON2 = Argon2Parameters(time_cost=1, memory_cost=8, parallelism=1)


class RecordingDiskPool:
    """
    A disk pool that records what it is asked to run. It runs the work at
    once, or, when C{hold} is set, keeps it until L{release} is called.

    @ivar calls: C{(function, args)} of every call, in order.
    """

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[tuple[Any, tuple]] = []
        self.hold = hold
        self._held: list[tuple[Deferred, Any, tuple]] = []

    def run(self, function: Any, *args: Any) -> Deferred:
        self.calls.append((function, args))
        if not self.hold:
            return maybeDeferred(function, *args)
        d: Deferred = Deferred()
        self._held.append((d, function, args))
        return d

    @property
    def pending(self) -> int:
        return len(self._held)

    def release(self) -> None:
        """
        Run the oldest held call and fire its L{Deferred}.
        """
        d, function, args = self._held.pop(0)
        maybeDeferred(function, *args).chainDeferred(d)

    def functions(self) -> list[Any]:
        return [function for function, _ in self.calls]


class DatabaseTestsMixin:
    """
    A users file in a temporary folder and a database over it.
    """

    def set_up_database(self: Any, hold: bool = False) -> None:
        self.path = os.path.join(self.mktemp())
        os.mkdir(self.path)
        self.path = os.path.join(self.path, "users")
        self.events: list[dict] = []
        self.disk = RecordingDiskPool(hold)
        self.database = UsersDatabase(self.path, self.disk, log=Logger(observer=self.events.append))

    def write(self: Any, data: bytes) -> None:
        """
        Replace the file (a new inode, as editors and the CLI do).
        """
        write_file_durably(self.path, data, 0o600, sync_directory=False)

    def messages(self: Any, level: str | None = None) -> list[str]:
        return [
            formatEvent(event)
            for event in self.events
            if level is None or event["log_level"].name == level
        ]


class LoadTests(DatabaseTestsMixin, SynchronousTestCase):
    """
    Tests for L{UsersDatabase.load}, L{UsersDatabase.lookup} and
    L{UsersDatabase.addresses}.
    """

    def setUp(self) -> None:
        self.set_up_database()

    def test_provides_interface(self) -> None:
        """
        L{UsersDatabase} provides L{IAccountStore}.
        """
        self.assertTrue(verifyObject(IAccountStore, self.database))

    def test_missing_file(self) -> None:
        """
        A missing file at start-up means no accounts, with a warning.
        """
        self.database.load()
        self.assertEqual([formatEvent(e) for e in self.events], [
            f"users file={self.path} status=loaded users=0",
            f'users file={self.path} status=missing reason="no such file: none until it is created"'])
        self.assertEqual(len(self.database), 0)
        self.assertEqual(self.database.addresses(), [])
        self.assertIsNone(self.database.lookup(Mailbox("alice", "example.test")))

    def test_lookup(self) -> None:
        """
        Lookups compare addresses case-insensitively and give the record;
        L{UsersDatabase.addresses} lists the keys in file order.
        """
        self.write(b"# x\nzed@example.test:{PLAIN}z\nAlice@Example.test:{PLAIN}a\n")
        self.database.load()
        self.assertEqual(
            self.database.lookup(parse_mailbox("ALICE@example.TEST")),
            UserRecord(Mailbox("Alice", "example.test"), "{PLAIN}a", 3),
        )
        self.assertIsNone(self.database.lookup(Mailbox("alice", "example.org")))
        self.assertEqual(self.database.addresses(), ["zed@example.test", "alice@example.test"])
        self.assertEqual(self.messages("info"), [f"users file={self.path} status=loaded users=2"])

    def test_mistake_raises_and_keeps_accounts(self) -> None:
        """
        A mistake raises L{UsersFileError} with the line, and the accounts
        in force stay.
        """
        self.write(b"alice@example.test:{PLAIN}a\n")
        self.database.load()
        self.write(b"alice@example.test:{PLAIN}a\nbob@example.test:{NOPE}b\n")
        with self.assertRaises(UsersFileError) as caught:
            self.database.load()
        self.assertEqual(str(caught.exception), f"{self.path}:2: bob@example.test: unknown password scheme {{NOPE}}")
        self.assertEqual(self.database.addresses(), ["alice@example.test"])

    def test_unreadable(self) -> None:
        """
        A file that exists but cannot be read is an error without a line.
        """
        os.mkdir(self.path)
        with self.assertRaises(UsersFileError) as caught:
            self.database.load()
        self.assertEqual(str(caught.exception), f"{self.path}: cannot read the users file: Is a directory")

    def test_plain_warnings(self) -> None:
        """
        Each C{{PLAIN}} line is warned about once at load, with its line.
        """
        self.write(
            b"# migration\nalice@example.test:{PLAIN}a\nbob@example.test:"
            + hash_password(b"b", CHEAP_ARGON2).encode()
            + b"\ncarol@example.test:{plain}c\n"
        )
        self.database.load()
        self.assertEqual(
            self.messages("warn"),
            [
                f'users file={self.path} line=2 user=alice@example.test status=plain-text-password '
                'reason="store a hash: mailappliance user passwd"',
                f'users file={self.path} line=4 user=carol@example.test status=plain-text-password '
                'reason="store a hash: mailappliance user passwd"',
            ],
        )


class CheckPasswordTests(DatabaseTestsMixin, SynchronousTestCase):
    """
    Tests for L{UsersDatabase.check_password}.
    """

    def setUp(self) -> None:
        self.set_up_database()
        self.hash = hash_password(b"right", CHEAP_ARGON2)
        self.write(b"alice@example.test:" + self.hash.encode() + b"\nbob@example.test:{PLAIN}bob\n")
        self.database.load()
        del self.disk.calls[:]

    def check(self, address: str, password: bytes) -> bool:
        return self.successResultOf(self.database.check_password(parse_mailbox(address), password))

    def test_right_password(self) -> None:
        """
        The right password gives L{True}, whatever the case of the address;
        the hash is verified in the disk pool.
        """
        self.assertIs(self.check("ALICE@example.test", b"right"), True)
        self.assertEqual(self.disk.calls, [(verify_password, (self.hash, b"right"))])
        self.assertIs(self.check("bob@example.test", b"bob"), True)

    def test_wrong_password(self) -> None:
        """
        A wrong password gives L{False}.
        """
        self.assertIs(self.check("alice@example.test", b"wrong"), False)
        self.assertIs(self.check("alice@example.test", b"right\x00"), False)
        self.assertIs(self.check("bob@example.test", b"\xff"), False)

    def test_unknown_user_verifies_dummy(self) -> None:
        """
        For an address without an account the password is verified against
        the dummy hash all the same (in the pool), and the answer is
        L{False}.
        """
        self.assertIs(self.check("nobody@example.test", b"right"), False)
        self.assertEqual(self.disk.calls, [(verify_password, (DUMMY_HASH, b"right"))])

    def test_not_on_calling_thread(self) -> None:
        """
        Nothing is verified before the pool runs the work: the answer waits
        for it.
        """
        self.disk.hold = True
        result = self.database.check_password(parse_mailbox("alice@example.test"), b"right")
        self.assertNoResult(result)
        self.assertEqual(self.disk.pending, 1)
        self.disk.release()
        self.assertIs(self.successResultOf(result), True)


class ReloadTests(DatabaseTestsMixin, SynchronousTestCase):
    """
    Tests for L{UsersDatabase.reload_if_changed} and
    L{UsersDatabase.reload}.
    """

    def setUp(self) -> None:
        self.set_up_database()
        self.write(b"alice@example.test:{PLAIN}a\n")
        self.database.load()
        del self.events[:]
        del self.disk.calls[:]

    def test_unchanged(self) -> None:
        """
        When the file has not changed nothing is read: only a C{stat}, in
        the pool.
        """
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), False)
        self.assertEqual(self.disk.functions(), [stat_signature])
        self.assertEqual(self.events, [])

    def test_picks_up_edit(self) -> None:
        """
        An edit is picked up: stat and read both in the pool, new accounts
        in force, one log line (and a warning about each C{{PLAIN}} line
        that the version before did not have: alice's was warned about at
        start-up).
        """
        self.write(b"alice@example.test:{PLAIN}a\nbob@example.test:{PLAIN}b\n")
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), True)
        self.assertEqual(self.disk.functions(), [stat_signature, self.database._read_and_parse])
        self.assertEqual(self.database.addresses(), ["alice@example.test", "bob@example.test"])
        self.assertEqual(
            self.messages(),
            [
                f"users file={self.path} status=loaded users=2",
                f'users file={self.path} line=2 user=bob@example.test status=plain-text-password '
                'reason="store a hash: mailappliance user passwd"',
            ],
        )
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), False)
        # A new version warns only about {PLAIN} lines it did not have.
        del self.events[:]
        self.write(b"alice@example.test:{PLAIN}a\nbob@example.test:{PLAIN}b\ncarol@example.test:{PLAIN}c\n")
        self.assertIs(self.successResultOf(self.database.reload()), True)
        self.assertEqual(self.messages(), [
            f"users file={self.path} status=loaded users=3",
                f'users file={self.path} line=3 user=carol@example.test status=plain-text-password '
                'reason="store a hash: mailappliance user passwd"',
        ])

    def test_picks_up_cli_edit(self) -> None:
        """
        A change made with the command line's functions is picked up.
        """
        edit.set_password(self.path, "alice@example.test", "{PLAIN}new")
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), True)
        self.assertIs(self.successResultOf(self.database.check_password(Mailbox("alice", "example.test"), b"new")), True)

    def test_bad_edit_keeps_last_good(self) -> None:
        """
        A version with a mistake is refused: the last good version stays in
        force, one error line names file and line, and it is not reported
        again at the next poll; a fixed version is then picked up.
        """
        self.write(b"alice@example.test:{PLAIN}a\n\nbob@example.test:b\n")
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), False)
        self.assertEqual(self.database.addresses(), ["alice@example.test"])
        self.assertEqual(
            self.messages("error"),
            [
                f"users file={self.path} line=3 status=refused "
                'reason="bob@example.test: password hash has no {SCHEME} prefix" '
                "(the previous version stays in force)"
            ],
        )
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), False)
        self.assertEqual(len(self.events), 1)
        self.write(b"bob@example.test:{PLAIN}b\n")
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), True)
        self.assertEqual(self.database.addresses(), ["bob@example.test"])

    def test_deleted_file(self) -> None:
        """
        A file that goes missing while the server runs (moved, deleted) is
        refused, logged once, and the last version stays in force (else
        every local recipient would be unknown and bounced); when it is
        back, it is read.
        """
        before = self.database.addresses()
        self.assertNotEqual(before, [])
        del self.events[:]
        os.unlink(self.path)
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), False)
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), False)
        self.assertEqual(self.database.addresses(), before)
        self.assertEqual([formatEvent(e) for e in self.events], [
            f'users file={self.path} status=missing reason="no such file" (the previous version stays in force)'])
        self.write(b"bob@example.test:{PLAIN}b\n")
        self.assertIs(self.successResultOf(self.database.reload_if_changed()), True)
        self.assertEqual(self.database.addresses(), ["bob@example.test"])

    def test_stat_fails(self) -> None:
        """
        A C{stat} that fails (other than for a missing file) keeps the
        accounts, and is logged once.
        """
        database = UsersDatabase(
            os.path.join(self.path, "users"), self.disk, log=Logger(observer=self.events.append)
        )
        self.assertIs(self.successResultOf(database.reload_if_changed()), False)
        self.assertIs(self.successResultOf(database.reload_if_changed()), False)
        self.assertEqual(
            self.messages("error"),
            [
                f"users file={self.path}/users status=unreadable reason=\"Not a directory\" "
                "(the previous version stays in force)"
            ],
        )

    def test_reload_unconditional(self) -> None:
        """
        L{UsersDatabase.reload} reads the file even when it looks unchanged.
        """
        self.assertIs(self.successResultOf(self.database.reload()), True)
        self.assertEqual(self.disk.functions(), [self.database._read_and_parse])

    def test_never_half_updated(self) -> None:
        """
        While a reload is reading, lookups see the old version whole; the
        new one replaces it at once.
        """
        self.disk.hold = True
        self.write(b"bob@example.test:{PLAIN}b\n")
        result = self.database.reload()
        self.assertNoResult(result)
        self.assertEqual(self.database.addresses(), ["alice@example.test"])
        self.disk.release()
        self.assertIs(self.successResultOf(result), True)
        self.assertEqual(self.database.addresses(), ["bob@example.test"])
        self.assertIsNone(self.database.lookup(Mailbox("alice", "example.test")))

    def test_reloads_serialised(self) -> None:
        """
        Reloads run one after the other: a second does not start reading
        before the first has put its version in force, so an older read
        never overwrites a newer one.
        """
        self.disk.hold = True
        first = self.database.reload()
        second = self.database.reload()
        self.assertEqual(self.disk.pending, 1)
        self.disk.release()
        self.assertIs(self.successResultOf(first), True)
        self.assertEqual(self.disk.pending, 1)
        self.disk.release()
        self.assertIs(self.successResultOf(second), True)

    def test_unexpected_error(self) -> None:
        """
        An unexpected exception during a reload is logged with its
        traceback and the reload fires L{False}; the accounts stay.
        """

        class BrokenPool:
            def run(self, function: Any, *args: Any) -> Deferred:
                return maybeDeferred(lambda: 1 / 0)

        database = UsersDatabase(self.path, BrokenPool(), log=Logger(observer=self.events.append))
        database.load()
        del self.events[:]
        self.assertIs(self.successResultOf(database.reload()), False)
        self.assertEqual(self.messages("critical"), [f"users file={self.path} status=error"])
        self.assertIsInstance(self.events[0]["log_failure"].value, ZeroDivisionError)
        self.assertEqual(database.addresses(), ["alice@example.test"])
