# -*- test-case-name: tests.test_pop3_locks -*-
"""
One POP3 session per mailbox (RFC 1939 section 8: the server must hold an
exclusive lock on the maildrop from login until the end of UPDATE).

The lock lives in memory. The whole server is one process and every POP3
factory shares L{PROCESS_MAILBOX_LOCKS} unless told otherwise, so one
registry sees every session; a crashed or killed process takes its registry
with it, so there is no lock file that could outlive the process and lock a
user out (the classic stale C{.lock} problem). Maildir itself needs no lock
for delivery: deliveries only add files to C{new/}, which a session simply
does not see until its next login.
"""

from __future__ import annotations


class MailboxLocks:
    """
    A registry of locked mailboxes, keyed by mailbox folder, each lock
    owned by one object (the session).
    """

    def __init__(self) -> None:
        self._owners: dict[str, object] = {}

    def acquire(self, key: str, owner: object) -> bool:
        """
        Take the lock of a mailbox.

        @param key: the mailbox folder (an absolute path).
        @param owner: who takes it (the session).
        @return: C{True} if the lock was free (or already C{owner}'s) and is
            now held by C{owner}; C{False} if another owner holds it.
        """
        holder = self._owners.setdefault(key, owner)
        return holder is owner

    def release(self, key: str, owner: object) -> None:
        """
        Give a lock back. Releasing a lock held by another owner, or not
        held at all, does nothing, so a late release can never free a lock
        a newer session has taken since.
        """
        if self._owners.get(key) is owner:
            del self._owners[key]

    def is_locked(self, key: str) -> bool:
        """
        @return: whether some session holds the lock of this mailbox.
        """
        return key in self._owners


PROCESS_MAILBOX_LOCKS = MailboxLocks()
"""The registry every POP3 factory uses unless given its own (tests)."""
