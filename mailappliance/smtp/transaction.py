# -*- test-case-name: tests.test_smtp_transaction -*-
"""
One mail transaction (RFC 5321 section 3.3): from MAIL to the end of DATA
or of the last BDAT chunk (or RSET, HELO/EHLO, the end of the session).

It remembers the sender and MAIL parameters, the recipients accepted at
RCPT, and the delivery targets they resolved to, deduplicated by
L{Mailbox.key} across all RCPTs, so that a message for C{team} and
C{alice} (a member of C{team}) reaches alice once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailappliance.address import Mailbox
from mailappliance.interfaces import Resolved
from mailappliance.queue.envelope import Recipient, unknown_alias_member
from mailappliance.smtp.commands import MailFrom

if TYPE_CHECKING:
    from mailappliance.smtp.receiver import MessageReceiver

class Transaction:
    """
    The state of one mail transaction.

    @ivar mail: the parsed MAIL command.
    @ivar recipients: the addresses accepted at RCPT, in order.
    @ivar rcpt_tried: whether any RCPT was given (accepted or not), to tell
        "no RCPT yet" (503) from "no valid recipients" (554) at DATA.
    @ivar message: the message receiving this transaction's BDAT chunks
        (RFC 3030), from the first accepted chunk on; L{None} before (and
        always, for DATA). Whoever ends the transaction commits or aborts it.
    @ivar message_octets: the octets of the BDAT chunks accepted so far
        (counted when a chunk is accepted, against the size limit).
    """

    def __init__(self, mail: MailFrom) -> None:
        self.mail = mail
        self.recipients: list[Mailbox] = []
        self.rcpt_tried = False
        self.message: MessageReceiver | None = None
        self.message_octets = 0
        self._targets: dict[str, Recipient] = {}

    @property
    def sender(self) -> Mailbox | None:
        return self.mail.sender

    def add(self, resolved: Resolved) -> None:
        """
        Record an accepted recipient and its targets. A target already
        recorded (through an earlier RCPT or earlier in this expansion)
        keeps its first record.
        """
        self.recipients.append(resolved.address)
        original = resolved.address
        for target in resolved.local:
            self._targets.setdefault(target.key, Recipient(original, target, local=True))
        for target in resolved.remote:
            # Only the remote server knows whether its local parts are
            # case-sensitive (RFC 5321 section 2.4): keep them apart.
            self._targets.setdefault(f"remote:{target.local}@{target.domain}", Recipient(original, target, local=False))
        for member in resolved.unknown:
            self._targets.setdefault(member.key, unknown_alias_member(original, member))

    def envelope_recipients(self) -> tuple[Recipient, ...]:
        """
        @return: every target, in the order first seen.
        """
        return tuple(self._targets.values())
