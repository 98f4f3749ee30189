# -*- test-case-name: tests.test_resolve_users -*-
"""
The C{"users"} resolver: the accounts of the users file are mailboxes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from zope.interface import implementer

from mailappliance.address import Mailbox
from mailappliance.interfaces import Account, IAddressResolver


@implementer(IAddressResolver)
class UsersResolver:
    """
    Answers L{Account} for every address that has an account in an
    L{mailappliance.interfaces.IAccountStore}.

    The store is held in memory (and reloads itself), so lookups answer at
    once; an exception from the store becomes a failed L{Deferred}, which
    the chain treats as a temporary failure.

    @ivar store: the account store.
    """

    name = "users"

    def __init__(self, store: Any) -> None:
        """
        @param store: an L{IAccountStore}; only its C{lookup(mailbox)} is
            used, which returns a record with a C{.mailbox} or L{None}.
        """
        self.store = store

    def resolve(self, mailbox: Mailbox) -> Deferred:
        """
        See L{IAddressResolver.resolve}.

        @return: a L{Deferred} firing with C{Account(record.mailbox)} (the
            account's own spelling of the address) or L{None}.
        """
        return maybeDeferred(self._lookup, mailbox)

    def resolve_catch_all(self, domain: str) -> Deferred:
        """
        See L{IAddressResolver.resolve_catch_all}: accounts have no
        catch-all, so always L{None}.
        """
        return succeed(None)

    def _lookup(self, mailbox: Mailbox) -> Account | None:
        record = self.store.lookup(mailbox)
        return None if record is None else Account(record.mailbox)
