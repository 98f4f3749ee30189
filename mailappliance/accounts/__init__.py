# -*- test-case-name: tests.test_accounts_users -*-
"""
Accounts: the users file (read, watch, edit), password hashing, and the
C{twisted.cred} checker for logins.

  - L{mailappliance.accounts.hashing}: C{{SCHEME}hash} creation and checks.
  - L{mailappliance.accounts.usersfile}: the file's syntax.
  - L{mailappliance.accounts.users}: L{UsersDatabase}, the server's
    L{mailappliance.interfaces.IAccountStore}, and (re-exported) the
    command line's editing functions of L{mailappliance.accounts.edit}.
  - L{mailappliance.accounts.checker}: L{AccountsChecker}.
"""
