"""
Tests for L{mailappliance.pop3.locks}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.pop3.locks import PROCESS_MAILBOX_LOCKS, MailboxLocks


class MailboxLocksTests(SynchronousTestCase):
    def test_exclusive(self):
        """
        A second owner cannot take a held lock; it can once released.
        """
        locks = MailboxLocks()
        a, b = object(), object()
        self.assertTrue(locks.acquire("/m", a))
        self.assertFalse(locks.acquire("/m", b))
        self.assertTrue(locks.acquire("/other", b))
        locks.release("/m", a)
        self.assertTrue(locks.acquire("/m", b))

    def test_release_by_other_owner_ignored(self):
        """
        A late release by a former owner does not free a newer owner's lock.
        """
        locks = MailboxLocks()
        a, b = object(), object()
        locks.acquire("/m", a)
        locks.release("/m", a)
        locks.acquire("/m", b)
        locks.release("/m", a)
        self.assertTrue(locks.is_locked("/m"))
        self.assertFalse(locks.acquire("/m", a))

    def test_process_registry(self):
        """
        There is one process-wide registry.
        """
        self.assertIsInstance(PROCESS_MAILBOX_LOCKS, MailboxLocks)
