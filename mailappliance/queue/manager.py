# -*- test-case-name: tests.test_queue_manager -*-
"""
The queue manager: the consumer of the spool that delivers each queued
message to its recipients and removes it when they are all done.

L{QueueManager} is the service, composed of mixins, one per concern: the
rounds in which it delivers a queued message and records the outcomes
(L{mailappliance.queue.rounds}), the direct delivery of a message's local
copies before it is queued (L{mailappliance.queue.direct}), and the log
lines and history of those outcomes (L{mailappliance.queue.outcomes}).
This module takes the messages (recovered at start-up, or newly
committed), carries out the administrator's commands on them (flush,
delete) and gives the figures for C{mailappliance status}.

On start-up L{Spool.recover} returns what a previous run left, and every
pending recipient resumes at its persisted C{next_attempt}.

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

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailappliance.address import log_address
from mailappliance.interfaces import DeliveryError, IRemoteDelivery  # noqa: F401 (re-exported)
from mailappliance.logtext import quote
from mailappliance.queue.direct import DirectDelivery
from mailappliance.queue.envelope import DELIVERED, FAILED, PENDING, Envelope
from mailappliance.queue.outcomes import HISTORY_SECONDS, OutcomeLog
from mailappliance.queue.rounds import (
    DeliveryRounds,
    delivery_prefix,  # noqa: F401 (re-exported)
    fire_waiters,
)

DEFAULT_RETRY_DELAY = 60.0
# On stop, how long to wait for rounds in flight (a remote delivery may be
# stuck in a DNS lookup or an SMTP time-out): what does not finish is
# simply tried again after the restart.
STOP_GRACE = 5.0
DEFAULT_LOCAL_CONCURRENCY = 8
REMOTE_UNAVAILABLE = "relay not available yet"

_default_log = Logger(namespace="mailappliance.queue")


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
    # Deliveries of the round in flight whose outcome is not yet known;
    # C{holding}: the round is starting them (what is known at once is
    # written as one batch once they are all started).
    outstanding: int = 0
    holding: bool = False
    # An envelope update of outcomes known during the round is in flight;
    # C{rewrite}: more outcomes arrived meanwhile, for the next update.
    writing: bool = False
    rewrite: bool = False
    # Waiting for the update in flight to end (the end of the round).
    written: list[Deferred] = field(default_factory=list)


class QueueManager(DirectDelivery, DeliveryRounds, OutcomeLog, Service):
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
        retry: Any = None,
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
        @param retry: the L{mailappliance.queue.relay.RetryPolicy} for
            local deliveries that fail temporarily (the relay's: backoff
            from C{retry_initial} to C{retry_max}, failed with 4.4.7 after
            C{max_queue_lifetime}), or L{None}: retried after
            C{retry_delay} for ever.
        """
        self.spool = spool
        self.local_delivery = local_delivery
        self.clock = clock
        self.log = log if log is not None else _default_log
        self.retry_delay = retry_delay
        self.retry = retry
        self._random = random.Random()
        self.remote_delivery = remote_delivery
        self.notifier = notifier
        self.recovered: Deferred | None = None
        self._local_slots = DeferredSemaphore(max_local_concurrency)
        self._messages: dict[str, _Message] = {}
        self.history: deque[tuple[float, str]] = deque()
        # Copies delivered directly of messages whose rest is being queued
        # (queue id to its (target, path) pairs and the recipients they
        # stand for): see withdraw_direct.
        self._direct_copies: dict[str, tuple[list[tuple[Any, str]], int]] = {}

    # -- service -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.spool.on_commit = self.enqueue
        self.spool.on_direct = self.deliver_direct
        self.spool.on_stream = self.stream_direct
        self.spool.on_streamed = self.streamed
        self.spool.on_withdraw = self.withdraw_direct
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
        self.spool.on_withdraw = None
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
        self._committed_after_direct(envelope.queue_id)
        if self.running:
            self._take(envelope, new=True)

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
            sender = log_address(envelope.sender) if envelope.sender is not None else ""
            self.log.info(
                "qid={qid} from=<{sender}> size={size} nrcpt={nrcpt} status=queued",
                qid=qid,
                sender=sender,
                size=envelope.size,
                nrcpt=len(envelope.recipients),
            )
            now = self.clock.seconds()
            for r in envelope.recipients:
                if r.state == FAILED:
                    # Failed before it was queued (an unknown alias member,
                    # a sendmail recipient nobody has): a failure all the
                    # same, for the status summary too.
                    self._log_failed(qid, r.target, r.last_error)
                    self.history.append((now, FAILED))
            self._forget_old_history(now)
        if self.remote_delivery is None:
            for r in envelope.recipients:
                if r.state == PENDING and not r.local:
                    self.log.info(
                        "qid={qid} to=<{to}> status=deferred reason={reason}",
                        qid=qid,
                        to=log_address(r.target),
                        reason=quote(REMOTE_UNAVAILABLE),
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
            fire_waiters(message.finished)
            self.log.info("qid={qid} status=deleted reason={reason}", qid=qid, reason=quote("by the administrator"))
            d = self.spool.remove(qid)
            d.addCallback(lambda _, q=qid: q)
            removals.append(d)
        d = DeferredList(removals, consumeErrors=True)
        d.addCallback(lambda results: [value for ok, value in results if ok])
        return d

