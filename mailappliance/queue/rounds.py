# -*- test-case-name: tests.test_queue_manager,tests.test_queue_bounce -*-
"""
The rounds of the queue manager: how it delivers a queued message and
records the outcomes, and when it tries again.

What it does with a message (one I{round} at a time per message, so the
same recipient is never delivered twice at once):

  - every pending local recipient that is due (C{next_attempt} reached) is
    delivered through L{ILocalDelivery} with a C{Return-Path:} and
    C{Delivered-To:} prefix (SPEC section 5); recipients of one message
    with the same target get one delivery;
  - remote recipients (C{local=False}) are handed to the optional
    L{IRemoteDelivery} (the relay), which makes one SMTP transaction per
    destination; without one they stay pending and persisted, with one
    log line per recipient and message;
  - each outcome (delivered; failed, for a permanent error; or retried
    later, for a temporary one: for a local delivery after the retry
    policy's backoff, failed with 4.4.7 once the message is older than
    its lifetime, as the relay does for a remote one) is recorded in the
    envelope as soon as it is known: that of one local target, or of one remote transaction (the relay
    reports each destination as it finishes). While other deliveries of
    the round are still in flight it is written at once (L{Spool.update});
    the outcomes that arrive while that write is in flight are written
    together by the next one, so there is one write per batch of
    outcomes, never one per recipient, and one at a time per message;
  - once every delivery of the round has its outcome, the notifier sends
    what is owed (one bounce for the round's failures, a delay warning)
    and the envelope is written once more with the last outcomes and the
    notices, or the message is removed if all its recipients are
    delivered or failed. A round with one delivery (one local mailbox,
    or one remote domain: most mail) therefore costs one write, as it
    always did;
  - then the next round is scheduled at the earliest C{next_attempt}.

The duplicate window: a delivery (a Maildir file, or the remote's 250
after the data) is durable before the envelope says so. If the process
dies between the two (or the envelope update fails), that recipient is
delivered again after the restart. RFC 5321 section 6.1 accepts
duplicates in preference to losses; the window is the time to write one
envelope (two if a write was already in flight when the outcome came),
whatever other deliveries of the same message are still doing: a slow
domain (a DNS time-out, a host that stops answering) does not hold back
the record of the others.

L{DeliveryRounds} is a mixin of
L{mailappliance.queue.manager.QueueManager}.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailappliance.address import log_address
from mailappliance.interfaces import DeliveryError
from mailappliance.logtext import quote
from mailappliance.queue.envelope import DELIVERED, FAILED, PENDING, Envelope, Recipient
from mailappliance.queue.outcomes import after_attempt, expired_error


def delivery_prefix(sender: Any, target: Any) -> bytes:
    """
    The header lines put in front of a locally delivered copy (SPEC
    section 5): C{Return-Path:} (RFC 5322 section 3.6.7, the envelope
    sender, C{<>} for the null sender) and C{Delivered-To:} (the account
    delivered to, see L{delivered_to}). Addresses are written as UTF-8
    (RFC 6532).

    @param sender: the envelope sender (L{Mailbox}) or L{None}.
    @param target: the address for C{Delivered-To:} (L{Mailbox}).
    @return: the lines, with CRLF line ends.
    """
    return_path = f"<{sender}>" if sender is not None else "<>"
    return f"Return-Path: {return_path}\r\nDelivered-To: {target}\r\n".encode()


def delivered_to(recipients: Any) -> Any:
    """
    The address a copy's C{Delivered-To:} names: the account delivered to,
    or, when the copy is for one sub-address of that account
    (C{alice+news}), that address as the client gave it, so that the tag
    reaches the user's filters (as Postfix writes it).

    @param recipients: the L{Recipient}s one copy is delivered for (one
        target).
    """
    target = recipients[0].target
    originals = {r.original.key for r in recipients}
    if len(originals) == 1:
        original = recipients[0].original
        base = original.without_subaddress()
        if base is not None and base.key == target.key:
            return original
    return target


class DeliveryRounds:
    """
    The rounds of the queue manager, a mixin of
    L{mailappliance.queue.manager.QueueManager}.

    Uses the manager's C{spool}, C{local_delivery}, C{remote_delivery},
    C{notifier}, C{clock}, C{log}, C{retry_delay}, C{retry}, C{running}, C{history},
    C{_local_slots} (the limit on local deliveries in flight) and
    C{_messages} (its state for each queued message, by queue id); and its
    methods C{_forget_old_history}, C{_log_delivered}, C{_log_deferred},
    C{_log_failed}.
    """

    spool: Any
    local_delivery: Any
    remote_delivery: Any
    notifier: Any
    clock: Any
    log: Logger
    retry_delay: float
    retry: Any
    _random: Any
    running: bool
    history: deque[tuple[float, str]]
    _local_slots: DeferredSemaphore
    _messages: dict[str, Any]
    _forget_old_history: Callable[[float], None]
    _log_delivered: Callable[[str, Any, str], None]
    _log_deferred: Callable[[str, Any, str], None]
    _log_failed: Callable[[str, Any, str], None]

    def _due(self, recipient: Recipient, now: float) -> bool:
        if recipient.state != PENDING or recipient.next_attempt > now:
            return False
        return recipient.local or self.remote_delivery is not None

    def _run(self, qid: str) -> None:
        message = self._messages.get(qid)
        if message is None or not self.running:
            return
        if message.active:
            message.again = True
            return
        if message.timer is not None and message.timer.active():
            message.timer.cancel()
        message.timer = None
        message.active = True
        message.holding = True
        envelope = message.envelope
        now = self.clock.seconds()
        body_path = self.spool.body_path(qid)
        attempts: list[Deferred] = []

        by_target: dict[str, list[int]] = {}
        remote: list[int] = []
        for index, r in enumerate(envelope.recipients):
            if self._due(r, now):
                if r.local:
                    by_target.setdefault(r.target.key, []).append(index)
                else:
                    remote.append(index)
        for indexes in by_target.values():
            attempts.append(self._deliver_local(envelope, indexes, body_path))
        if remote:
            attempts.append(self._deliver_remote(message, remote, body_path))

        message.outstanding = len(attempts)
        for attempt in attempts:
            attempt.addCallback(self._attempt_done, message)
        # Outcomes known at once (a synchronous fake, a relay's early
        # report) make one batch.
        message.holding = False
        if message.outstanding:
            self._write_outcomes(message)
        d = DeferredList(attempts)
        d.addCallback(self._round_done, message)

    def _deliver_local(self, envelope: Envelope, indexes: list[int], body_path: str) -> Deferred:
        qid = envelope.queue_id
        target = envelope.recipients[indexes[0]].target
        prefix = delivery_prefix(envelope.sender, delivered_to([envelope.recipients[i] for i in indexes]))
        # The body is the first envelope.size bytes of the queue file
        # (layout version 2 appends the envelope to it).
        d = self._local_slots.run(self.local_delivery.deliver, target, prefix, body_path, envelope.size)

        def delivered(path: str) -> list[tuple[int, Recipient]]:
            self._log_delivered(qid, target, path)
            return [
                (i, after_attempt(envelope.recipients[i], state=DELIVERED, last_error="", next_attempt=0.0))
                for i in indexes
            ]

        def failed(reason: Failure) -> list[tuple[int, Recipient]]:
            if reason.check(DeliveryError):
                error = reason.value
            else:
                self.log.failure("qid={qid} to=<{to}> status=error", reason, qid=qid, to=log_address(target))
                error = DeliveryError(f"local delivery error: {reason.getErrorMessage()}")
            if error.permanent:
                self._log_failed(qid, target, error.reason)
                changes: dict[str, Any] = {"state": FAILED, "last_error": error.reason}
            else:
                changes = self._local_deferral(envelope, envelope.recipients[indexes[0]], error.reason)
                if changes.get("state") == FAILED:
                    self._log_failed(qid, target, changes["last_error"])
                else:
                    self._log_deferred(qid, target, error.reason, changes["next_attempt"] - self.clock.seconds())
            return [(i, after_attempt(envelope.recipients[i], **changes)) for i in indexes]

        d.addCallbacks(delivered, failed)
        return d

    def _local_deferral(self, envelope: Envelope, recipient: Recipient, reason: str) -> dict[str, Any]:
        """
        The changes for a local delivery that failed temporarily: tried
        again after the retry policy's backoff (as a relay would be), and
        failed with 4.4.7 (a bounce) once the message is older than its
        lifetime, as SPEC section 2 says of any queued message.
        """
        now = self.clock.seconds()
        policy = self.retry
        if policy is None:
            return {"last_error": reason, "next_attempt": now + self.retry_delay}
        expires = envelope.arrival + policy.lifetime
        if now >= expires:
            return {"state": FAILED, "status": "4.4.7", "last_error": expired_error(envelope, now, reason)}
        delay = policy.delay(recipient.attempts + 1, self._random)
        return {"last_error": reason, "next_attempt": min(now + delay, expires)}

    def _deliver_remote(self, message: Any, indexes: list[int], body_path: str) -> Deferred:
        envelope = message.envelope
        qid = envelope.queue_id
        recipients = tuple(envelope.recipients[i] for i in indexes)
        # Positions (in recipients) whose outcome the relay reported
        # before its result: recorded, and written, already.
        reported: set[int] = set()
        over = False

        def report(outcomes: Any) -> None:
            if over:
                return
            updates = []
            for position, recipient in outcomes:
                if position not in reported:
                    reported.add(position)
                    updates.append((indexes[position], recipient))
            if updates:
                self._record(message, updates)
                # The relay call itself is still outstanding.
                self._write_outcomes(message)

        d = maybeDeferred(self.remote_delivery.deliver, envelope, recipients, body_path, report=report)

        def done(results: Any) -> list[tuple[int, Recipient]]:
            results = list(results)
            if len(results) != len(indexes):
                raise ValueError(f"remote delivery returned {len(results)} results for {len(indexes)} recipients")
            return [(indexes[p], r) for p, r in enumerate(results) if p not in reported]

        def failed(reason: Failure) -> list[tuple[int, Recipient]]:
            self.log.failure("qid={qid} status=error reason=\"remote delivery failed\"", reason, qid=qid)
            retry = self.clock.seconds() + self.retry_delay
            # What was reported stands: those recipients were attempted
            # (and may be delivered); trying them again would duplicate.
            return [
                (indexes[p], after_attempt(r, last_error=reason.getErrorMessage(), next_attempt=retry))
                for p, r in enumerate(recipients)
                if p not in reported
            ]

        def close(result: Any) -> Any:
            nonlocal over
            over = True
            return result

        d.addBoth(close)
        d.addCallback(done)
        d.addErrback(failed)
        return d

    # -- recording the outcomes ---------------------------------------------

    def _current(self, message: Any) -> bool:
        """
        Whether C{message} is still the one the manager holds (not deleted
        or found removed while its round was in flight).
        """
        return self._messages.get(message.envelope.queue_id) is message

    def _attempt_done(self, updates: list[tuple[int, Recipient]], message: Any) -> None:
        message.outstanding -= 1
        self._record(message, updates)
        if message.outstanding:
            # Others of the round are still in flight (a slow domain may
            # take minutes): make these outcomes durable now. The last
            # one is written by the end of the round, with the notices.
            self._write_outcomes(message)

    def _record(self, message: Any, updates: list[tuple[int, Recipient]]) -> None:
        """
        Put outcomes into the message's envelope in memory.

        @param updates: C{(index in the envelope's recipients, new
            recipient)} pairs.
        """
        if not updates or not self._current(message):
            return
        recipients = list(message.envelope.recipients)
        now = self.clock.seconds()
        for index, recipient in updates:
            if recipients[index].state == PENDING and recipient.state != PENDING:
                self.history.append((now, recipient.state))
            recipients[index] = recipient
        self._forget_old_history(now)
        message.envelope = message.envelope.replace(recipients=tuple(recipients))
        message.dirty = True

    def _write_outcomes(self, message: Any) -> None:
        """
        Write the outcomes known so far during a round (one envelope
        update). One update at a time per message: outcomes that arrive
        while one is in flight are written together by the next.
        """
        if not self._current(message) or not message.dirty or message.holding:
            return
        if message.writing:
            message.rewrite = True
            return
        message.writing = True
        message.rewrite = False
        message.dirty = False
        qid = message.envelope.queue_id
        d = self.spool.update(message.envelope)
        d.addErrback(self._persist_failed, qid, "update")
        d.addCallback(self._outcomes_written, message)

    def _outcomes_written(self, _: object, message: Any) -> None:
        message.writing = False
        if message.rewrite and message.outstanding:
            self._write_outcomes(message)
        # With nothing outstanding, the end of the round writes the rest.
        message.rewrite = False
        if not message.writing:
            waiters, message.written = message.written, []
            fire_waiters(waiters)

    def _round_done(self, _: object, message: Any) -> None:
        if not self._current(message):
            # Deleted by the administrator during the round.
            return
        if message.writing:
            d: Deferred = Deferred()
            message.written.append(d)
        else:
            d = succeed(None)
        d.addCallback(lambda _: self._end_round(message))

    def _end_round(self, message: Any) -> None:
        if not self._current(message):
            # Found removed by the last update of the round.
            return
        qid = message.envelope.queue_id
        if self.notifier is not None:
            d = maybeDeferred(self.notifier.after_round, message.envelope)
        else:
            d = succeed(message.envelope)
        d.addCallback(self._persist, qid)
        d.addErrback(lambda reason: self.log.failure("qid={qid} status=error", reason, qid=qid))
        d.addCallback(lambda _: self._round_finished(qid))

    def _owes_notice(self, envelope: Envelope) -> bool:
        return self.notifier is not None and self.notifier.owes_notice(envelope)

    def _persist(self, envelope: Envelope, qid: str) -> Deferred:
        message = self._messages.get(qid)
        if message is None:
            return succeed(None)
        if envelope is not message.envelope:
            message.envelope = envelope
            message.dirty = True
        if envelope.done and not self._owes_notice(envelope):
            d = self.spool.remove(qid)
            d.addCallbacks(self._removed, self._persist_failed, callbackArgs=(qid,), errbackArgs=(qid, "remove"))
        elif message.dirty:
            d = self.spool.update(envelope)
            d.addCallbacks(self._updated, self._persist_failed, callbackArgs=(qid,), errbackArgs=(qid, "update"))
        else:
            d = succeed(None)
        return d

    def _updated(self, _: object, qid: str) -> None:
        message = self._messages.get(qid)
        if message is not None:
            message.dirty = False

    def _removed(self, _: object, qid: str) -> None:
        message = self._messages.pop(qid, None)
        self.log.info("qid={qid} status=removed", qid=qid)
        if message is not None:
            fire_waiters(message.finished)

    def _persist_failed(self, reason: Failure, qid: str, what: str) -> None:
        # The outcomes stay in memory (no duplicate delivery in this run)
        # and the write is tried again after retry_delay; a crash meanwhile
        # means redelivery, as for the window described above.
        if what == "update" and reason.check(FileNotFoundError):
            # Removed by someone else (the administrator's "queue delete").
            message = self._messages.pop(qid, None)
            self.log.info("qid={qid} status=removed reason={reason}", qid=qid, reason=quote("no longer in the queue"))
            if message is not None:
                fire_waiters(message.finished)
            return
        message = self._messages.get(qid)
        if message is not None:
            message.dirty = True
        self.log.error(
            "qid={qid} status=error reason={reason}",
            qid=qid,
            reason=quote(f"envelope {what} failed: {reason.getErrorMessage()}"),
        )

    def _round_finished(self, qid: str) -> None:
        message = self._messages.get(qid)
        if message is None:
            return
        message.active = False
        finished, message.finished = message.finished, []
        fire_waiters(finished)
        if not self.running:
            return
        if message.again:
            message.again = False
            self._run(qid)
        else:
            self._schedule(qid)

    def _schedule(self, qid: str) -> None:
        message = self._messages[qid]
        now = self.clock.seconds()
        times = [
            r.next_attempt
            for r in message.envelope.recipients
            if r.state == PENDING and (r.local or self.remote_delivery is not None)
        ]
        if message.dirty or message.envelope.done or self._owes_notice(message.envelope):
            # A failed update, removal or notice, to be tried again.
            times.append(now + self.retry_delay)
        if not times:
            return
        delay = max(0.0, min(times) - now)
        message.timer = self.clock.callLater(delay, self._run, qid)


def fire_waiters(waiters: list[Deferred]) -> None:
    """
    Fire each of C{waiters} (those waiting for a message's round to end)
    with L{None}.
    """
    for waiter in waiters:
        waiter.callback(None)
