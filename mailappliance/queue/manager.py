# -*- test-case-name: tests.test_queue_manager -*-
"""
The queue manager: the consumer of the spool that delivers each queued
message to its recipients and removes it when they are all done.

What it does with a message (one I{round} at a time per message, so the
same recipient is never delivered twice at once):

  - every pending local recipient that is due (C{next_attempt} reached) is
    delivered through L{ILocalDelivery} with a C{Return-Path:} and
    C{Delivered-To:} prefix (SPEC section 5); recipients of one message
    with the same target get one delivery;
  - the outcomes are recorded in the envelope and written durably
    (L{Spool.update}) once all deliveries of the round are done: delivered,
    failed (a permanent L{DeliveryError}; bounces come with a later issue),
    or retried after C{retry_delay} (a temporary one);
  - a message whose recipients are all delivered or failed is removed;
  - remote recipients (C{local=False}) are handed to the optional
    L{IRemoteDelivery} (the relay); without one they stay pending and
    persisted, with one log line per recipient and message.

On start-up L{Spool.recover} returns what a previous run left, and every
pending recipient resumes at its persisted C{next_attempt}.

Direct delivery (L{QueueManager.deliver_direct}, the spool's C{on_direct}
hook): the local copies of a message whose body is still in memory when
the client ends the data (up to L{mailappliance.queue.writer.CHUNK_SIZE},
so most mail) are written straight into each target's Maildir (file and
C{new/} fsynced) before the 250. A larger body whose recipients all lead
to one local mailbox is written into that Maildir's C{tmp/} as it
arrives (L{QueueManager.stream_direct}, the spool's C{on_stream} hook)
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
duplicate that RFC 5321 section 6.1 prefers to a loss. A message with a
recipient that arrived failed (owed a bounce), or a larger one for
several mailboxes or a remote one, goes wholly through the queue.

The duplicate window: a Maildir delivery is durable before the envelope
says so. If the process dies between the two (or the envelope update
fails), that recipient is delivered again after the restart. RFC 5321
section 6.1 accepts duplicates in preference to losses; the window is one
round (the time to write one envelope).

Log lines (one event each, key=value, with the queue id; a message
delivered directly has only its C{status=delivered} lines, after the SMTP
server's C{event=queued} line)::

  qid=... from=<...> size=... nrcpt=... status=queued
  qid=... to=<...> status=delivered path=...
  qid=... to=<...> status=deferred reason="..." delay=60
  qid=... to=<...> status=failed reason="..."
  qid=... status=removed
  qid=... status=removed reason="no longer in the queue"   (deleted by the admin)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailappliance.interfaces import DeliveryError, IRemoteDelivery  # noqa: F401 (re-exported)
from mailappliance.queue.envelope import DELIVERED, FAILED, PENDING, Envelope, Recipient

DEFAULT_RETRY_DELAY = 60.0
# On stop, how long to wait for rounds in flight (a remote delivery may be
# stuck in a DNS lookup or an SMTP time-out): what does not finish is
# simply tried again after the restart.
STOP_GRACE = 5.0
# Outcomes remembered for "mailappliance status" (deliveries and bounces
# over the last hour).
HISTORY_SECONDS = 3600.0
DEFAULT_LOCAL_CONCURRENCY = 8
REMOTE_UNAVAILABLE = "relay not available yet"

_default_log = Logger(namespace="mailappliance.queue")


def delivery_prefix(sender: Any, target: Any) -> bytes:
    """
    The header lines put in front of a locally delivered copy (SPEC
    section 5): C{Return-Path:} (RFC 5322 section 3.6.7, the envelope
    sender, C{<>} for the null sender) and C{Delivered-To:} (the account
    delivered to). Addresses are written as UTF-8 (RFC 6532).

    @param sender: the envelope sender (L{Mailbox}) or L{None}.
    @param target: the recipient's target (L{Mailbox}).
    @return: the lines, with CRLF line ends.
    """
    return_path = f"<{sender}>" if sender is not None else "<>"
    return f"Return-Path: {return_path}\r\nDelivered-To: {target}\r\n".encode()


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    return f'"{escaped}"'


@dataclass
class _Message:
    """
    The manager's state for one queued message.
    """

    envelope: Envelope
    active: bool = False
    again: bool = False
    # Outcomes recorded in memory that are not yet on disk.
    dirty: bool = False
    timer: Any = None
    finished: list[Deferred] = field(default_factory=list)


class QueueManager(Service):
    """
    Delivers queued messages. A service: started after the disk pool and
    before the listeners.

    @ivar recovered: after L{startService}, a L{Deferred} firing with the
        number of messages recovered from the spool (for tests and
        start-up ordering).
    """

    name = "queue"

    def __init__(
        self,
        spool: Any,
        local_delivery: Any,
        clock: Any,
        log: Logger | None = None,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_local_concurrency: int = DEFAULT_LOCAL_CONCURRENCY,
        remote_delivery: Any = None,
        notifier: Any = None,
    ) -> None:
        """
        @param spool: the L{mailappliance.queue.spool.Spool}.
        @param local_delivery: an L{ILocalDelivery}.
        @param clock: provides C{seconds()} (Unix time) and C{callLater}.
        @param log: the L{Logger} to use.
        @param retry_delay: seconds before a temporarily failed local
            delivery is tried again.
        @param max_local_concurrency: local deliveries in flight at once,
            over all messages.
        @param remote_delivery: an L{IRemoteDelivery}, or L{None}: remote
            recipients then stay queued.
        @param notifier: a L{mailappliance.queue.bounce.Notifier} (bounces
            and delay warnings after each round), or L{None}: failures are
            then only logged.
        """
        self.spool = spool
        self.local_delivery = local_delivery
        self.clock = clock
        self.log = log if log is not None else _default_log
        self.retry_delay = retry_delay
        self.remote_delivery = remote_delivery
        self.notifier = notifier
        self.recovered: Deferred | None = None
        self._local_slots = DeferredSemaphore(max_local_concurrency)
        self._messages: dict[str, _Message] = {}
        self.history: deque[tuple[float, str]] = deque()

    # -- service -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.spool.on_commit = self.enqueue
        self.spool.on_direct = self.deliver_direct
        self.spool.on_stream = self.stream_direct
        self.spool.on_streamed = self.streamed
        self.recovered = self.spool.recover()
        self.recovered.addCallbacks(self._take_recovered, self._recovery_failed)

    def stopService(self) -> Deferred:
        """
        Stop starting deliveries. Messages stay in the queue for the next
        start.

        @return: a L{Deferred} firing once the rounds in flight have
            recorded their outcomes.
        """
        super().stopService()
        self.spool.on_commit = None
        self.spool.on_direct = None
        self.spool.on_stream = None
        self.spool.on_streamed = None
        waiting = []
        for message in self._messages.values():
            if message.timer is not None and message.timer.active():
                message.timer.cancel()
            message.timer = None
            if message.active:
                d: Deferred = Deferred()
                message.finished.append(d)
                waiting.append(d)
        done: Deferred = Deferred()

        def finish(_: object = None) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                # Idle outbound connections kept for the next message
                # (smarthost) say QUIT now rather than die with the process.
                close_idle = getattr(self.remote_delivery, "close_idle", None)
                if close_idle is not None:
                    close_idle()
                done.callback(None)

        timer = self.clock.callLater(STOP_GRACE, finish)
        DeferredList(waiting).addCallback(finish)
        return done

    def _take_recovered(self, envelopes: list[Envelope]) -> int:
        for envelope in envelopes:
            self._take(envelope, new=False)
        return len(envelopes)

    def _recovery_failed(self, reason: Failure) -> None:
        self.log.failure("event=recover status=error reason=\"queue recovery failed\"", reason)

    # -- taking messages ---------------------------------------------------

    def enqueue(self, envelope: Envelope) -> None:
        """
        Take a newly committed message (the spool's C{on_commit} hook).
        Ignored when the service is not running: the message is on disk and
        is recovered at the next start.

        @param envelope: its envelope, as committed.
        """
        if self.running:
            self._take(envelope, new=True)

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
            d = self.local_delivery.deliver_data(target, delivery_prefix(envelope.sender, target), body)
            d.addCallbacks(self._delivered_direct, self._direct_failed, callbackArgs=(qid, target, indexes),
                           errbackArgs=(qid, target))
            attempts.append(d)

        def record(results: list[tuple[bool, Any]]) -> Envelope:
            recipients = list(envelope.recipients)
            now = self.clock.seconds()
            for _, indexes in results:
                for i in indexes:
                    recipients[i] = _attempted(recipients[i], state=DELIVERED, last_error="", next_attempt=0.0)
                    self.history.append((now, DELIVERED))
            self._forget_old_history(now)
            return envelope.replace(recipients=tuple(recipients))

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
        return self.local_delivery.open_stream(target, delivery_prefix(sender, target))

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

    def _delivered_direct(self, path: str, qid: str, target: Any, indexes: list[int]) -> list[int]:
        self._log_delivered(qid, target, path)
        return indexes

    def _direct_failed(self, reason: Failure, qid: str, target: Any) -> list[int]:
        # Not an outcome: the message is queued with this recipient pending
        # and the queue's first round tries it again at once (and logs it).
        if not reason.check(DeliveryError):
            self.log.failure("qid={qid} to=<{to}> status=error", reason, qid=qid, to=str(target))
        return []

    def summary(self) -> dict[str, Any]:
        """
        Figures for C{mailappliance status}: messages queued, the oldest
        one's arrival, and deliveries and failures over the last hour.
        """
        now = self.clock.seconds()
        recent = [kind for when, kind in self.history if when >= now - HISTORY_SECONDS]
        arrivals = [m.envelope.arrival for m in self._messages.values()]
        return {
            "queued": len(self._messages),
            "oldest_arrival": min(arrivals) if arrivals else None,
            "delivered_last_hour": recent.count(DELIVERED),
            "failed_last_hour": recent.count(FAILED),
        }

    @property
    def queue_ids(self) -> list[str]:
        """
        The queue ids the manager holds, in no particular order.
        """
        return list(self._messages)

    def envelope(self, queue_id: str) -> Envelope | None:
        """
        @return: the manager's current view of a message's envelope, or
            L{None} if it does not hold it.
        """
        message = self._messages.get(queue_id)
        return message.envelope if message is not None else None

    def _take(self, envelope: Envelope, new: bool) -> None:
        qid = envelope.queue_id
        if qid in self._messages:
            # A message committed while recovery scanned the queue.
            return
        self._messages[qid] = _Message(envelope)
        if new:
            sender = str(envelope.sender) if envelope.sender is not None else ""
            self.log.info(
                "qid={qid} from=<{sender}> size={size} nrcpt={nrcpt} status=queued",
                qid=qid,
                sender=sender,
                size=envelope.size,
                nrcpt=len(envelope.recipients),
            )
            for r in envelope.recipients:
                if r.state == FAILED:
                    self._log_failed(qid, r.target, r.last_error)
        if self.remote_delivery is None:
            for r in envelope.recipients:
                if r.state == PENDING and not r.local:
                    self.log.info(
                        "qid={qid} to=<{to}> status=deferred reason={reason}",
                        qid=qid,
                        to=str(r.target),
                        reason=_quote(REMOTE_UNAVAILABLE),
                    )
        self._run(qid)

    # -- administration ----------------------------------------------------

    def flush(self, queue_ids: list[str] | None = None) -> list[str]:
        """
        Retry now (C{mailappliance queue flush}): every pending recipient of
        the given messages (all when L{None}) becomes due at once.

        @return: the queue ids flushed.
        """
        chosen = list(self._messages) if queue_ids is None else [q for q in queue_ids if q in self._messages]
        for qid in chosen:
            message = self._messages[qid]
            message.envelope = message.envelope.replace(recipients=tuple(
                r.with_state(next_attempt=0.0) if r.state == PENDING else r for r in message.envelope.recipients))
            self.log.info("qid={qid} status=flushed", qid=qid)
            self._run(qid)
        return chosen

    def delete(self, queue_ids: list[str]) -> Deferred:
        """
        Remove messages from the queue without delivering them further
        (C{mailappliance queue delete}); no bounce is sent.

        @return: a L{Deferred} firing with the queue ids removed.
        """
        removals = []
        for qid in queue_ids:
            message = self._messages.pop(qid, None)
            if message is None:
                continue
            if message.timer is not None and message.timer.active():
                message.timer.cancel()
            _fire(message.finished)
            self.log.info("qid={qid} status=deleted reason={reason}", qid=qid, reason=_quote("by the administrator"))
            d = self.spool.remove(qid)
            d.addCallback(lambda _, q=qid: q)
            removals.append(d)
        d = DeferredList(removals, consumeErrors=True)
        d.addCallback(lambda results: [value for ok, value in results if ok])
        return d

    # -- rounds ------------------------------------------------------------

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
            attempts.append(self._deliver_remote(envelope, remote, body_path))

        d = DeferredList(attempts)
        d.addCallback(self._round_done, qid, bool(attempts))

    def _deliver_local(self, envelope: Envelope, indexes: list[int], body_path: str) -> Deferred:
        qid = envelope.queue_id
        target = envelope.recipients[indexes[0]].target
        prefix = delivery_prefix(envelope.sender, target)
        # The body is the first envelope.size bytes of the queue file
        # (layout version 2 appends the envelope to it).
        d = self._local_slots.run(self.local_delivery.deliver, target, prefix, body_path, envelope.size)

        def delivered(path: str) -> list[tuple[int, Recipient]]:
            self._log_delivered(qid, target, path)
            return [
                (i, _attempted(envelope.recipients[i], state=DELIVERED, last_error="", next_attempt=0.0))
                for i in indexes
            ]

        def failed(reason: Failure) -> list[tuple[int, Recipient]]:
            if reason.check(DeliveryError):
                error = reason.value
            else:
                self.log.failure("qid={qid} to=<{to}> status=error", reason, qid=qid, to=str(target))
                error = DeliveryError(f"local delivery error: {reason.getErrorMessage()}")
            if error.permanent:
                self._log_failed(qid, target, error.reason)
                changes: dict[str, Any] = {"state": FAILED, "last_error": error.reason}
            else:
                self._log_deferred(qid, target, error.reason)
                changes = {"last_error": error.reason, "next_attempt": self.clock.seconds() + self.retry_delay}
            return [(i, _attempted(envelope.recipients[i], **changes)) for i in indexes]

        d.addCallbacks(delivered, failed)
        return d

    def _deliver_remote(self, envelope: Envelope, indexes: list[int], body_path: str) -> Deferred:
        qid = envelope.queue_id
        recipients = tuple(envelope.recipients[i] for i in indexes)
        d = maybeDeferred(self.remote_delivery.deliver, envelope, recipients, body_path)

        def done(results: Any) -> list[tuple[int, Recipient]]:
            results = list(results)
            if len(results) != len(indexes):
                raise ValueError(f"remote delivery returned {len(results)} results for {len(indexes)} recipients")
            return list(zip(indexes, results))

        def failed(reason: Failure) -> list[tuple[int, Recipient]]:
            self.log.failure("qid={qid} status=error reason=\"remote delivery failed\"", reason, qid=qid)
            retry = self.clock.seconds() + self.retry_delay
            return [
                (i, _attempted(r, last_error=reason.getErrorMessage(), next_attempt=retry))
                for i, r in zip(indexes, recipients)
            ]

        d.addCallback(done)
        d.addErrback(failed)
        return d

    def _round_done(self, results: list[tuple[bool, Any]], qid: str, attempted: bool) -> None:
        message = self._messages.get(qid)
        if message is None:
            # Deleted by the administrator during the round.
            return
        recipients = list(message.envelope.recipients)
        now = self.clock.seconds()
        for _, updates in results:
            for index, recipient in updates:
                if recipients[index].state == PENDING and recipient.state != PENDING:
                    self.history.append((now, recipient.state))
                recipients[index] = recipient
        self._forget_old_history(now)
        message.envelope = message.envelope.replace(recipients=tuple(recipients))
        message.dirty = message.dirty or attempted
        if self.notifier is not None:
            d = maybeDeferred(self.notifier.after_round, message.envelope)
        else:
            d = succeed(message.envelope)
        d.addCallback(self._persist, qid)
        d.addErrback(lambda reason: self.log.failure("qid={qid} status=error", reason, qid=qid))
        d.addCallback(lambda _: self._round_finished(qid))

    def _forget_old_history(self, now: float) -> None:
        while self.history and self.history[0][0] < now - HISTORY_SECONDS:
            self.history.popleft()

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
            _fire(message.finished)

    def _persist_failed(self, reason: Failure, qid: str, what: str) -> None:
        # The outcomes stay in memory (no duplicate delivery in this run)
        # and the write is tried again after retry_delay; a crash meanwhile
        # means redelivery, as for the window described above.
        if what == "update" and reason.check(FileNotFoundError):
            # Removed by someone else (the administrator's "queue delete").
            message = self._messages.pop(qid, None)
            self.log.info("qid={qid} status=removed reason={reason}", qid=qid, reason=_quote("no longer in the queue"))
            if message is not None:
                _fire(message.finished)
            return
        message = self._messages.get(qid)
        if message is not None:
            message.dirty = True
        self.log.error(
            "qid={qid} status=error reason={reason}",
            qid=qid,
            reason=_quote(f"envelope {what} failed: {reason.getErrorMessage()}"),
        )

    def _round_finished(self, qid: str) -> None:
        message = self._messages.get(qid)
        if message is None:
            return
        message.active = False
        finished, message.finished = message.finished, []
        _fire(finished)
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

    # -- logging -----------------------------------------------------------

    def _log_delivered(self, qid: str, target: Any, path: str) -> None:
        self.log.info("qid={qid} to=<{to}> status=delivered path={path}", qid=qid, to=str(target), path=path)

    def _log_deferred(self, qid: str, target: Any, reason: str) -> None:
        self.log.info(
            "qid={qid} to=<{to}> status=deferred reason={reason} delay={delay:g}",
            qid=qid,
            to=str(target),
            reason=_quote(reason),
            delay=self.retry_delay,
        )

    def _log_failed(self, qid: str, target: Any, reason: str) -> None:
        self.log.warn(  # noqa: G010 -- twisted.logger.Logger has no warning()
            "qid={qid} to=<{to}> status=failed reason={reason}", qid=qid, to=str(target), reason=_quote(reason)
        )


def _attempted(recipient: Recipient, **changes: Any) -> Recipient:
    return recipient.with_state(attempts=recipient.attempts + 1, **changes)


def _fire(waiters: list[Deferred]) -> None:
    for waiter in waiters:
        waiter.callback(None)
