# -*- test-case-name: tests.test_accounts_checker -*-
"""
The C{twisted.cred} checker for logins (POP3, SMTP AUTH) against the
account store.

The login name is the full address (SPEC section 3). The avatar id is the
account's L{Mailbox.key} (a L{str}): the lower-cased address, the same for
every spelling the user types, which the realm maps to the mailbox.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from mailappliance.address import AddressError, parse_mailbox


@implementer(ICredentialsChecker)
class AccountsChecker:
    """
    Checks L{IUsernamePassword} credentials against an
    L{mailappliance.interfaces.IAccountStore}.

    @ivar store: the account store.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, store: Any) -> None:
        """
        @param store: an L{mailappliance.interfaces.IAccountStore}.
        """
        self.store = store

    def requestAvatarId(self, credentials: Any) -> Deferred:
        """
        See L{ICredentialsChecker.requestAvatarId}.

        @param credentials: an L{IUsernamePassword} whose C{username} is the
            address (L{bytes}, decoded as UTF-8, or L{str}) and whose
            C{password} is L{bytes} (a L{str} is encoded as UTF-8).
        @return: a L{Deferred} firing with the account's L{Mailbox.key}, or
            failing with L{UnauthorizedLogin} when the name is not an
            address, has no account, or the password is wrong. Other
            failures of the store (an error in the disk pool) are passed on
            as they are.
        """
        try:
            mailbox = parse_mailbox(credentials.username, allow_utf8=True)
        except AddressError:
            return fail(UnauthorizedLogin("the login name is not an address"))
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8", "surrogateescape")

        def checked(matches: bool) -> str:
            if not matches:
                # The same text whether the account exists or not.
                raise UnauthorizedLogin("wrong login name or password")
            return mailbox.key

        return self.store.check_password(mailbox, password).addCallback(checked)
