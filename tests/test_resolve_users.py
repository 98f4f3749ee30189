# -*- test-case-name: tests.test_resolve_users -*-
"""
Tests for L{mailappliance.resolve.users}.
"""

from dataclasses import dataclass

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailappliance.address import Mailbox, parse_mailbox
from mailappliance.interfaces import Account, IAddressResolver
from mailappliance.resolve.users import UsersResolver


@dataclass(frozen=True)
class FakeRecord:
    mailbox: Mailbox


class FakeStore:
    """
    The part of L{mailappliance.interfaces.IAccountStore} the resolver
    uses: C{lookup} by key.
    """

    def __init__(self, *addresses):
        self.records = {parse_mailbox(a).key: FakeRecord(parse_mailbox(a)) for a in addresses}
        self.looked_up = []

    def lookup(self, mailbox):
        self.looked_up.append(mailbox)
        return self.records.get(mailbox.key)


class BrokenStore:
    def lookup(self, mailbox):
        raise OSError("store exploded")


class UsersResolverTests(SynchronousTestCase):
    def setUp(self):
        self.store = FakeStore("Alice@example.test")
        self.resolver = UsersResolver(self.store)

    def test_interface(self):
        """
        L{UsersResolver} provides L{IAddressResolver} and is named
        C{"users"}.
        """
        self.assertTrue(verifyObject(IAddressResolver, self.resolver))
        self.assertEqual(self.resolver.name, "users")

    def test_account(self):
        """
        An address with an account resolves to an L{Account} of the
        record's mailbox (its spelling, whatever the case asked).
        """
        result = self.successResultOf(self.resolver.resolve(parse_mailbox("ALICE@example.test")))
        self.assertEqual(result, Account(Mailbox("Alice", "example.test")))
        self.assertEqual(self.store.looked_up, [Mailbox("ALICE", "example.test")])

    def test_no_account(self):
        """
        An address without an account resolves to L{None}.
        """
        self.assertIsNone(self.successResultOf(self.resolver.resolve(parse_mailbox("bob@example.test"))))

    def test_no_catch_all(self):
        """
        Accounts have no catch-all.
        """
        self.assertIsNone(self.successResultOf(self.resolver.resolve_catch_all("example.test")))

    def test_store_fails(self):
        """
        An exception from the store becomes a failed L{Deferred}, not an
        exception from C{resolve}.
        """
        resolver = UsersResolver(BrokenStore())
        failure = self.failureResultOf(resolver.resolve(parse_mailbox("a@example.test")), OSError)
        self.assertEqual(str(failure.value), "store exploded")
