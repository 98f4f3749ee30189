"""
Tests for L{mailappliance.smtp.transaction}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import Mailbox
from mailappliance.interfaces import Resolved
from mailappliance.queue.envelope import UNKNOWN_MEMBER_ERROR, Recipient
from mailappliance.smtp.commands import MailFrom
from mailappliance.smtp.transaction import Transaction

ALICE = Mailbox("alice", "example.test")
BOB = Mailbox("Bob", "example.test")
TEAM = Mailbox("team", "example.test")
CAROL = Mailbox("carol", "elsewhere.test")
GHOST = Mailbox("ghost", "example.test")


class TransactionTests(SynchronousTestCase):
    def test_targets(self) -> None:
        """
        Local, remote and unknown targets become recipients; targets are
        deduplicated by key across RCPTs, keeping the first.
        """
        transaction = Transaction(MailFrom(None))
        transaction.add(Resolved(TEAM, local=(ALICE, BOB), remote=(CAROL,), unknown=(GHOST,)))
        transaction.add(Resolved(ALICE, local=(ALICE,)))
        transaction.add(Resolved(Mailbox("bob", "example.test"), local=(Mailbox("BOB", "example.test"),)))
        self.assertEqual(transaction.recipients, [TEAM, ALICE, Mailbox("bob", "example.test")])
        self.assertEqual(
            transaction.envelope_recipients(),
            (
                Recipient(TEAM, ALICE, local=True),
                Recipient(TEAM, BOB, local=True),
                Recipient(TEAM, CAROL, local=False),
                Recipient(TEAM, GHOST, local=True, state="failed", status="5.1.1", last_error=UNKNOWN_MEMBER_ERROR),
            ),
        )
        self.assertIsNone(transaction.sender)
        self.assertEqual(UNKNOWN_MEMBER_ERROR, "5.1.1 unknown alias member")

    def test_remote_local_parts_keep_their_case(self) -> None:
        """
        Remote targets whose local parts differ only in case are kept
        apart (RFC 5321 section 2.4: only the remote server may fold them);
        the same remote address twice is one target.
        """
        transaction = Transaction(MailFrom(None))
        for address in (Mailbox("dup", "remote.test"), Mailbox("DUP", "remote.test"), Mailbox("dup", "remote.test")):
            transaction.add(Resolved(address, remote=(address,)))
        self.assertEqual(
            [str(r.target) for r in transaction.envelope_recipients()], ["dup@remote.test", "DUP@remote.test"]
        )
