# -*- test-case-name: tests.test_queue_manager,tests.test_io_budget -*-
"""
The queue manager's direct delivery: the local copies of a message
delivered before it is queued.

Direct delivery (L{DirectDelivery.deliver_direct}, the spool's C{on_direct}
hook): the local copies of a message whose body is still in memory when
the client ends the data (up to L{mailappliance.queue.writer.CHUNK_SIZE},
so most mail) are written straight into each target's Maildir (file and
C{new/} fsynced) before the 250. A larger body whose recipients all lead
to one local mailbox is written into that Maildir's C{tmp/} as it
arrives (L{DirectDelivery.stream_direct}, the spool's C{on_stream} hook)
and published into C{new/} before the 250: the body is written once, not
to the queue and then copied; if anything fails on the way the message
is refused with a temporary error (the client still holds it), since its
body is then nowhere else. A message whose recipients are all
local never enters the queue: one file creation and two fsyncs instead
of two creations, five fsyncs and an unlink (the figures are in
C{tests/test_io_budget.py}). It is as durable as a queued message (SPEC
section 5: durable before the 250), and what is not delivered at once is
queued as usual: the message is committed to the queue with the
recipients already delivered marked so, and the others pending (remote
ones, and local ones whose delivery failed, tried again by the first
round at once; so a failure is logged and retried like any queued
delivery, and bounces come from the queue). A crash before the 250 may
leave copies already delivered; the client sends the message again, a
duplicate that RFC 5321 section 6.1 prefers to a loss. If the queue
cannot take the rest of a message delivered in part (a full disk), the
client is refused and sends it again, so the copies already delivered are
taken back first (L{DirectDelivery.withdraw_direct}, the spool's
C{on_withdraw} hook). A message with a
recipient that arrived failed (owed a bounce), or a larger one for
several mailboxes or a remote one, goes wholly through the queue.

L{DirectDelivery} is a mixin of
L{mailappliance.queue.manager.QueueManager}; what is queued is then
delivered by its rounds (L{mailappliance.queue.rounds}).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailappliance.address import log_address
from mailappliance.interfaces import DeliveryError
from mailappliance.logtext import value
from mailappliance.queue.envelope import DELIVERED, PENDING, Envelope, Recipient
from mailappliance.queue.outcomes import after_attempt
from mailappliance.queue.rounds import delivered_to, delivery_prefix


class DirectDelivery:
    """
    The direct delivery of the queue manager (the spool's C{on_direct},
    C{on_stream} and C{on_streamed} hooks), a mixin of
    L{mailappliance.queue.manager.QueueManager}.

    Uses the manager's C{local_delivery}, C{clock}, C{log}, C{running},
    C{history}, and its methods C{_forget_old_history} and
    C{_log_delivered}.
    """

    local_delivery: Any
    clock: Any
    log: Logger
    running: bool
    history: deque[tuple[float, str]]
    _forget_old_history: Callable[[float], None]
    _log_delivered: Callable[[str, Any, str], None]
    _direct_copies: dict[str, tuple[list[tuple[Any, str]], int]]

    def deliver_direct(self, envelope: Envelope, body: bytes) -> Deferred | None:
        """
        Deliver the local copies of a small message before it is queued
        (the spool's C{on_direct} hook, called by
        L{mailappliance.queue.writer.SpoolWriter.commit} with the whole
        body in memory). See "Direct delivery" in the module docstring.

        @param envelope: the envelope about to be committed.
        @param body: the message.
        @return: L{None} if the message must go through the queue (the
            service is not running, no recipient is local, or one is not
            pending); otherwise a L{Deferred} firing with the envelope in
            which every recipient delivered durably is C{DELIVERED}. The
            others are left as they were, for the queue to try again at
            once. It never fails.
        """
        if not self.running:
            return None
        by_target: dict[str, list[int]] = {}
        for index, r in enumerate(envelope.recipients):
            if r.state != PENDING:
                # One that arrived failed is owed a bounce: the queue's.
                return None
            if r.local:
                by_target.setdefault(r.target.key, []).append(index)
        if not by_target:
            return None
        qid = envelope.queue_id
        attempts = []
        for indexes in by_target.values():
            target = envelope.recipients[indexes[0]].target
            prefix = delivery_prefix(envelope.sender, delivered_to([envelope.recipients[i] for i in indexes]))
            d = self.local_delivery.deliver_data(target, prefix, body)
            d.addCallbacks(self._delivered_direct, self._direct_failed, callbackArgs=(qid, target, indexes),
                           errbackArgs=(qid, target))
            attempts.append(d)

        def record(results: list[tuple[bool, Any]]) -> Envelope:
            recipients = list(envelope.recipients)
            copies = []
            count = 0
            for _, (indexes, copy) in results:
                if copy is not None:
                    copies.append(copy)
                for i in indexes:
                    recipients[i] = after_attempt(recipients[i], state=DELIVERED, last_error="", next_attempt=0.0)
                    count += 1
            delivered = envelope.replace(recipients=tuple(recipients))
            if copies and not delivered.done:
                # Until the queue commit: see withdraw_direct. The copies
                # count as delivered once they are sure to stay.
                self._direct_copies[qid] = (copies, count)
            else:
                self._count_delivered(count)
            return delivered

        return DeferredList(attempts).addCallback(record)

    def stream_direct(self, sender: Any, recipients: tuple[Recipient, ...]) -> Any:
        """
        The spool's C{on_stream} hook: a body too large to hold in memory
        goes straight into its Maildir as it arrives when every recipient
        is pending and local and they all lead to one mailbox (see "Direct
        delivery" in the module docstring).

        @return: the L{ILocalDelivery} stream, or L{None}: the queue.
        """
        if not self.running or not recipients:
            return None
        if any(r.state != PENDING or not r.local for r in recipients):
            return None
        if len({r.target.key for r in recipients}) != 1:
            return None
        target = recipients[0].target
        return self.local_delivery.open_stream(target, delivery_prefix(sender, delivered_to(recipients)))

    def streamed(self, envelope: Envelope, path: str) -> None:
        """
        The spool's C{on_streamed} hook: a message written by a stream from
        L{stream_direct} is durable in its Maildir; log and count it.
        """
        now = self.clock.seconds()
        target = envelope.recipients[0].target
        self._log_delivered(envelope.queue_id, target, path)
        for _ in envelope.recipients:
            self.history.append((now, DELIVERED))
        self._forget_old_history(now)

    def withdraw_direct(self, qid: str) -> Deferred:
        """
        The spool's C{on_withdraw} hook: a message delivered here in part
        could not be queued for the rest, so the client is refused and
        will send it again. The copies already delivered are taken back,
        so that its next attempt does not deliver them twice.

        @return: a L{Deferred} firing when they are gone.
        """
        copies, _ = self._direct_copies.pop(qid, ([], 0))
        attempts = []
        for target, path in copies:
            d = self.local_delivery.withdraw(path)
            d.addCallback(lambda _, target=target, path=path: self.log.info(
                "qid={qid} to=<{to}> status=withdrawn path={path} reason=\"the message could not be queued\"",
                qid=qid, to=log_address(target), path=value(path)))
            attempts.append(d)
        return DeferredList(attempts, fireOnOneErrback=True, consumeErrors=True)

    def _committed_after_direct(self, qid: str) -> None:
        # The rest of the message is queued: its copies stay.
        _, count = self._direct_copies.pop(qid, ([], 0))
        self._count_delivered(count)

    def _count_delivered(self, count: int) -> None:
        now = self.clock.seconds()
        for _ in range(count):
            self.history.append((now, DELIVERED))
        self._forget_old_history(now)

    def _delivered_direct(self, path: str, qid: str, target: Any,
                          indexes: list[int]) -> tuple[list[int], tuple[Any, str]]:
        self._log_delivered(qid, target, path)
        return indexes, (target, path)

    def _direct_failed(self, reason: Failure, qid: str, target: Any) -> tuple[list[int], None]:
        # Not an outcome: the message is queued with this recipient pending
        # and the queue's first round tries it again at once (and logs it).
        if not reason.check(DeliveryError):
            self.log.failure("qid={qid} to=<{to}> status=error", reason, qid=qid, to=log_address(target))
        return [], None
