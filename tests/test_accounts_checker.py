# -*- test-case-name: tests.test_accounts_checker -*-
"""
Tests for L{mailappliance.accounts.checker}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from mailappliance.accounts.checker import AccountsChecker
from mailappliance.accounts.hashing import Argon2Parameters, hash_password
from mailappliance.accounts.users import UsersDatabase
from mailappliance.disk import SynchronousDiskPool

CHEAP_ARGON2 = Argon2Parameters(time_cost=1, memory_cost=8, parallelism=1)


class IMailboxAvatar(Interface):
    """
    The interface the test realm hands out.
    """


@implementer(IRealm)
class RecordingRealm:
    """
    A realm that records the avatar ids it is asked for.
    """

    def __init__(self) -> None:
        self.avatar_ids: list[Any] = []

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Deferred:
        self.avatar_ids.append(avatarId)
        return succeed((IMailboxAvatar, f"mailbox of {avatarId}", lambda: None))


class AccountsCheckerTests(SynchronousTestCase):
    """
    Tests for L{AccountsChecker}, over a real L{UsersDatabase}.
    """

    def setUp(self) -> None:
        folder = self.mktemp()
        os.mkdir(folder)
        path = os.path.join(folder, "users")
        with open(path, "wb") as f:
            f.write(
                b"Alice@Example.test:"
                + hash_password(b"s3cret", CHEAP_ARGON2).encode()
                + "\nbob@example.test:{PLAIN}bøb\n".encode()
            )
        self.store = UsersDatabase(path, SynchronousDiskPool())
        self.store.load()
        self.checker = AccountsChecker(self.store)

    def login(self, username: Any, password: Any) -> Deferred:
        return self.checker.requestAvatarId(UsernamePassword(username, password))

    def assert_refused(self, username: Any, password: Any) -> None:
        self.failureResultOf(self.login(username, password), UnauthorizedLogin)

    def test_interface(self) -> None:
        """
        It is an L{ICredentialsChecker} for L{IUsernamePassword}.
        """
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))
        from twisted.cred.credentials import IUsernamePassword

        self.assertEqual(self.checker.credentialInterfaces, (IUsernamePassword,))

    def test_right_password(self) -> None:
        """
        The right password gives the account's key (a L{str}), whatever
        the case of the login name.
        """
        for username in (b"alice@example.test", b"ALICE@Example.TEST", "Alice@example.test"):
            avatar_id = self.successResultOf(self.login(username, b"s3cret"))
            self.assertEqual(avatar_id, "alice@example.test")
            self.assertIsInstance(avatar_id, str)
        self.assertEqual(self.successResultOf(self.login(b"bob@example.test", "bøb".encode())), "bob@example.test")

    def test_str_password(self) -> None:
        """
        A L{str} password is encoded as UTF-8.
        """
        self.assertEqual(self.successResultOf(self.login(b"bob@example.test", "bøb")), "bob@example.test")

    def test_wrong_password(self) -> None:
        """
        A wrong password is refused.
        """
        self.assert_refused(b"alice@example.test", b"s3creT")
        self.assert_refused(b"alice@example.test", b"")
        self.assert_refused(b"bob@example.test", "bøb".encode("latin-1"))

    def test_unknown_user(self) -> None:
        """
        An address without an account is refused.
        """
        self.assert_refused(b"carol@example.test", b"s3cret")
        self.assert_refused(b"alice@example.org", b"s3cret")

    def test_bad_login_name(self) -> None:
        """
        A login name that is not an address, or not UTF-8, is refused
        without consulting the store.
        """
        asked = []
        self.store.check_password = lambda *args: asked.append(args)  # type: ignore[method-assign]
        for username in (b"alice", b"", b"alice@example.test\x00", b"\xffalice@example.test", b"<alice@example.test>"):
            self.assert_refused(username, b"s3cret")
        self.assertEqual(asked, [])

    def test_through_portal(self) -> None:
        """
        Through a L{Portal}, a login reaches the realm with the account's
        key as avatar id; a bad one fails with L{UnauthorizedLogin} and the
        realm is not asked.
        """
        realm = RecordingRealm()
        portal = Portal(realm, [self.checker])
        interface, avatar, logout = self.successResultOf(
            portal.login(UsernamePassword(b"ALICE@example.test", b"s3cret"), None, IMailboxAvatar)
        )
        self.assertIs(interface, IMailboxAvatar)
        self.assertEqual(avatar, "mailbox of alice@example.test")
        self.assertEqual(realm.avatar_ids, ["alice@example.test"])
        self.failureResultOf(
            portal.login(UsernamePassword(b"alice@example.test", b"nope"), None, IMailboxAvatar),
            UnauthorizedLogin,
        )
        self.assertEqual(realm.avatar_ids, ["alice@example.test"])
