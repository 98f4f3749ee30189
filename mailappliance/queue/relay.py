# -*- test-case-name: tests.test_queue_relay -*-
"""
The relay: outbound delivery of a queued message's remote recipients (SPEC
section 5, "Outbound relay"), plugged into the queue manager as its
L{IRemoteDelivery}.

For one message, the due remote recipients are grouped by destination
domain (everything is one group when a smarthost is set), and each group
is one SMTP transaction (L{mailappliance.smtp.client.deliver}) to the hosts
the router gives (L{mailappliance.queue.routing}). At most
C{max_concurrent_deliveries} transactions run at once over all messages.
With MX routing at most L{PER_DESTINATION_LIMIT} of them go to one
destination domain, to be gentle with other people's servers; a smarthost
is our own relay, meant to take all of our outbound mail, so every one of
the C{max_concurrent_deliveries} connections may go to it. Connections to
the smarthost are reused from one message to the next while they keep
coming (L{mailappliance.smtp.client_cache}; idle ones close after
L{mailappliance.smtp.client_cache.IDLE_TIME_LIMIT}).

Every recipient comes back with its new state:

  - delivered;
  - failed, for a permanent failure (a 5xx reply, a domain that does not
    exist, a null MX, a message looping through too many hosts): the queue
    manager's notifier sends the bounce;
  - pending again, for a temporary failure (4xx, connection refused or
    lost, time-out, DNS server failure), with C{next_attempt} set by
    exponential backoff: C{retry_initial}, doubled after each failed
    attempt up to C{retry_max}, with +-10% jitter so that retries of many
    messages spread out; the schedule is in the envelope, so it survives
    restarts. The recipients of one transaction that fail together get
    the same C{next_attempt} (one draw of the jitter per message and
    destination), so they are retried together in one transaction, not
    in one connection each (a greylisting 450 to every recipient is the
    common case);
  - failed with status 4.4.7 once the message is older than
    C{max_queue_lifetime} (its last temporary error is kept for the DSN).

Each attempt is logged, one line per recipient::

  qid=... to=<...> relay=host[ip]:port delay=12.3 tls=TLSv1.3/... status=sent|deferred|bounced reply="..."

The outcome of each transaction is known when it ends, and the relay
gives it to the queue manager then (the C{report} of
L{IRemoteDelivery.deliver}) rather than when the message's last
destination is done, so the manager writes it at once (see
L{mailappliance.queue.rounds}): a slow destination (a DNS time-out, a
host that stops answering, for minutes) does not keep the recipients
another destination accepted unrecorded.

What the next hop must offer is decided on what the message holds, as
recorded at reception (L{Envelope.content}), not on what the client
declared (see L{needs_8bitmime} and L{needs_smtputf8}): a 7-bit message
declared C{BODY=8BITMIME} goes to a server without 8BITMIME as it is, an
all-ASCII one declared C{SMTPUTF8} goes without C{SMTPUTF8}; 8-bit
content is never converted, so a server without 8BITMIME gets a bounce
(5.6.3) instead.

Crash safety: the remote's 250 and our durable record of it are not
atomic. A crash after the remote accepted the message and before the
manager wrote the envelope (one envelope write after that transaction
ended) means that recipient is sent again after the restart (RFC 5321
section 6.1 prefers a duplicate to a loss). Nothing else can duplicate or
lose a message.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.address import log_address
from mailappliance.logtext import quote
from mailappliance.queue.dsn import count_received_headers
from mailappliance.queue.envelope import (
    CONTENT_7BIT,
    CONTENT_8BIT_HEADERS,
    CONTENT_UNKNOWN,
    DELIVERED,
    FAILED,
    Envelope,
    Recipient,
)
from mailappliance.queue.manager import IRemoteDelivery
from mailappliance.queue.outcomes import expired_error
from mailappliance.queue.routing import RoutingError
from mailappliance.smtp import client as smtp_client
from mailappliance.smtp.client_cache import SessionCache

# RFC 5321 section 6.3: a message that has passed this many hosts is
# looping; Postfix's hopcount_limit is 50 too.
MAX_HOPS = 50
# Recipients per transaction: RFC 5321 section 4.5.3.1.8 obliges a server
# to take 100 (and Postfix sends no more by default).
MAX_RECIPIENTS = 100
PER_DESTINATION_LIMIT = 4
JITTER = 0.1
SMARTHOST_GROUP = "*"

_default_log = Logger(namespace="mailappliance.relay")


def needs_8bitmime(envelope: Envelope) -> bool:
    """
    Whether the message must be sent as C{BODY=8BITMIME}, and so only to a
    server that offers 8BITMIME.

    RFC 6152 section 3 is about 8-bit content: a message that holds no
    octet above 127 needs no conversion and no 8BITMIME, whatever its
    C{BODY=} said (many clients declare 8BITMIME for every message), so
    it goes to a 7-bit server as it is. A message that does hold 8-bit
    octets needs 8BITMIME whether or not it was declared: undeclared
    8-bit data is the client's error, but passing it raw to a server that
    did not offer 8BITMIME would make the error ours (RFC 6152 section 3),
    and we do not convert to 7 bits, so such a server means a bounce
    (5.6.3, L{mailappliance.smtp.client_session}); to a server that offers
    8BITMIME it goes labelled C{BODY=8BITMIME}, as it should have been.

    A message queued before its content was recorded is as declared.
    """
    if envelope.content == CONTENT_UNKNOWN:
        return envelope.body == "8BITMIME"
    return envelope.content != CONTENT_7BIT


def needs_smtputf8(envelope: Envelope, recipients: list[Recipient]) -> bool:
    """
    Whether the transaction that sends C{envelope} to C{recipients} must
    say C{SMTPUTF8}, and so go only to a server that offers it.

    RFC 6531 section 3.4: a client that knows that neither the envelope
    nor the message needs SMTPUTF8 should not send it. An address with a
    non-ASCII local part always needs it (an alias may lead to one even
    when the client did not declare it). Otherwise a message declared
    C{SMTPUTF8} needs it only when its header section holds 8-bit octets
    (RFC 6532 header fields, or a non-ASCII recipient in our
    C{Received:}); undeclared 8-bit header octets are left to 8BITMIME,
    as before (Postfix, by default, likewise asks for SMTPUTF8 only for
    mail that declared it). A message queued before its content was
    recorded is as declared.
    """
    if (envelope.sender is not None and envelope.sender.needs_smtputf8) or any(
        r.target.needs_smtputf8 for r in recipients
    ):
        return True
    if not envelope.smtputf8:
        return False
    return envelope.content in (CONTENT_UNKNOWN, CONTENT_8BIT_HEADERS)


@dataclass(frozen=True)
class RetryPolicy:
    """
    @ivar initial: seconds before the first retry.
    @ivar maximum: the longest delay between attempts.
    @ivar lifetime: seconds after arrival when retries end.
    """

    initial: float = 300.0
    maximum: float = 4 * 3600.0
    lifetime: float = 5 * 86400.0

    def delay(self, failed_attempts: int, rng: random.Random) -> float:
        """
        The delay after the C{failed_attempts}-th consecutive failure.
        """
        base = min(self.initial * (2 ** max(0, failed_attempts - 1)), self.maximum)
        return base * rng.uniform(1 - JITTER, 1 + JITTER)


@implementer(IRemoteDelivery)
class Relay:
    """
    @param reactor: for the SMTP client's connections and time-outs.
    @param router: provides C{route(domain) -> Deferred[list[RouteHost]]}.
    @param options: the L{smtp_client.ClientOptions}.
    @param retry: the L{RetryPolicy}.
    @param disk: the disk pool (reading the spool).
    @param clock: C{seconds()} (Unix time); the reactor by default.
    @param smarthost: whether the router is a smarthost (one group, no
        per-destination limit, connections reused).
    @param deliver: the SMTP client's C{deliver} (a seam for tests); it
        is given C{cache=}: with a smarthost a
        L{mailappliance.smtp.client_cache.SessionCache}, else L{None}.
    """

    def __init__(self, reactor: Any, router: Any, options: Any, retry: RetryPolicy, disk: Any,
                 max_concurrent: int = 20, clock: Any = None, smarthost: bool = False,
                 deliver: Any = smtp_client.deliver, rng: random.Random | None = None,
                 log: Logger | None = None) -> None:
        self.reactor = reactor
        self.router = router
        self.options = options
        self.retry = retry
        self.disk = disk
        self.clock = clock if clock is not None else reactor
        self.smarthost = smarthost
        self._deliver = deliver
        self._random = rng or random.Random()
        self._slots = defer.DeferredSemaphore(max_concurrent)
        # Smarthost only: whole attempts (address lookup included) at once.
        self._smarthost_gate = defer.DeferredSemaphore(max_concurrent)
        # Smarthost only: its idle connections, for the next message.
        self.sessions = SessionCache(self.reactor) if smarthost else None
        # MX routing only: destination domain -> its gate, while in use.
        self._destinations: dict[str, defer.DeferredSemaphore] = {}
        self.log = log if log is not None else _default_log

    @defer.inlineCallbacks
    def deliver(self, envelope: Envelope, recipients: tuple[Recipient, ...], body_path: str, report: Any = None):
        """
        See L{IRemoteDelivery.deliver}: each destination is one
        transaction (one per L{MAX_RECIPIENTS} recipients), and the outcome of one that finishes while others are
        still in flight is given to C{report} at once (the last comes with
        the result), so that the queue manager can write it before a slow
        destination is done.
        """
        try:
            hops = yield self.disk.run(count_received_headers, body_path, envelope.size)
        except OSError:
            hops = 0
        if hops > MAX_HOPS:
            reason = f"message has passed {hops} hosts (mail loop?)"
            updated = [self._failed(envelope, r, reason, "5.4.6", "") for r in recipients]
            for r in updated:
                self._log(envelope, r, "bounced", None)
            return updated
        groups: dict[str, list[int]] = {}
        for index, r in enumerate(recipients):
            key = SMARTHOST_GROUP if self.smarthost else r.target.domain
            groups.setdefault(key, []).append(index)
        results: list[Recipient | None] = [None] * len(recipients)
        in_flight = len(groups)
        # Outcomes known but not given to report (the last destination's).
        unreported: list[tuple[int, Recipient]] = []

        def finished(result: Any, indexes: list[int]) -> Any:
            nonlocal in_flight
            in_flight -= 1
            if isinstance(result, Failure):
                return result
            outcomes = list(zip(indexes, result, strict=True))
            for i, r in outcomes:
                results[i] = r
            if in_flight and report is not None:
                self._report(envelope, report, outcomes)
            else:
                unreported.extend(outcomes)
            return result

        def early(indexes: list[int]) -> Any:
            # Outcomes of a destination's transaction while more of its
            # transactions are to come (more than MAX_RECIPIENTS): written
            # at once, so that a stop or crash before the others finish
            # does not send those recipients the message again.
            if report is None:
                return None
            return lambda pairs: self._report(envelope, report, [(indexes[p], r) for p, r in pairs])

        attempts = [self._group(envelope, [recipients[i] for i in indexes], body_path, key, early(indexes))
                    .addBoth(finished, indexes)
                    for key, indexes in groups.items()]
        # Every destination is waited for, even when one fails, so that no
        # transaction of this call is still running when it ends.
        done = yield defer.DeferredList(attempts, consumeErrors=True)
        failures = [result for ok, result in done if not ok]
        if failures:
            # The call fails, and the manager retries what it was not told
            # about: tell it what the other destinations did, so that no
            # recipient they delivered is sent again.
            if unreported and report is not None:
                self._report(envelope, report, unreported)
            failures[0].raiseException()
        return results

    def _report(self, envelope: Envelope, report: Any, outcomes: list[tuple[int, Recipient]]) -> None:
        try:
            report(outcomes)
        except Exception:
            self.log.failure("qid={qid} status=error reason=\"reporting outcomes failed\"", qid=envelope.queue_id)

    def close_idle(self) -> None:
        """
        Close the idle connections kept for the next message (at shut-down;
        the queue manager calls this once its deliveries have stopped).
        """
        if self.sessions is not None:
            self.sessions.close_all()

    def _group(self, envelope: Envelope, recipients: list[Recipient], body_path: str, destination: str,
               early: Any = None):
        # The overall limit (max_concurrent_deliveries) counts SMTP
        # sessions only: each transaction takes a slot (see _transaction),
        # the DNS lookup before does not, so that domains whose DNS is slow
        # or dead do not hold up mail for the others.
        if self.smarthost:
            # One destination for everything: only the overall limit, for
            # whole attempts too (each looks the smarthost's address up).
            return self._smarthost_gate.run(self._attempt, envelope, recipients, body_path, destination, early)
        gate = self._destinations.get(destination)
        if gate is None:
            gate = self._destinations[destination] = defer.DeferredSemaphore(PER_DESTINATION_LIMIT)

        d = gate.run(self._attempt, envelope, recipients, body_path, destination, early)

        def forget(result):
            if not gate.waiting and gate.tokens == gate.limit:
                self._destinations.pop(destination, None)
            return result

        return d.addBoth(forget)

    @defer.inlineCallbacks
    def _attempt(self, envelope: Envelope, recipients: list[Recipient], body_path: str, destination: str,
                 early: Any = None):
        try:
            hosts = yield self.router.route(recipients[0].target.domain)
        except RoutingError as e:
            retry_at = self._retry_at([] if e.permanent else recipients)
            updated = []
            for r in recipients:
                if e.permanent:
                    r = self._failed(envelope, r, e.reason, e.status, "")
                    self._log(envelope, r, "bounced", None)
                else:
                    r = self._deferred(envelope, r, e.reason, e.status, "", retry_at)
                    self._log(envelope, r, "deferred" if r.state != FAILED else "bounced", None)
                updated.append(r)
            return updated
        # At most MAX_RECIPIENTS per transaction (RFC 5321 section
        # 4.5.3.1.8: a server need not take more); those a server refused
        # with "too many recipients" while it took others go in the next
        # transaction at once, not at the next retry.
        updated: list[Recipient | None] = [None] * len(recipients)
        waiting = list(range(len(recipients)))
        while waiting:
            batch, waiting = waiting[:MAX_RECIPIENTS], waiting[MAX_RECIPIENTS:]
            outcome = yield self._transaction(envelope, [recipients[i] for i in batch], body_path, hosts)
            results = {i: outcome.result_for(str(recipients[i].target)) for i in batch}
            if any(result.delivered for result in results.values()):
                overflow = [i for i in batch if _too_many_recipients(results[i])]
                waiting = overflow + waiting
                batch = [i for i in batch if i not in overflow]
            outcomes = list(zip(batch, self._outcomes(envelope, [recipients[i] for i in batch], outcome),
                                strict=True))
            for i, r in outcomes:
                updated[i] = r
            if waiting and early is not None:
                early(outcomes)
        return updated

    def _transaction(self, envelope: Envelope, recipients: list[Recipient], body_path: str, hosts: Any) -> Any:
        message = smtp_client.OutboundMessage(
            sender=str(envelope.sender) if envelope.sender is not None else "",
            recipients=tuple(str(r.target) for r in recipients),
            body_path=body_path,
            size=envelope.size,
            eight_bit=needs_8bitmime(envelope),
            smtputf8=needs_smtputf8(envelope, recipients),
            queue_id=envelope.queue_id,
        )
        return self._slots.run(self._deliver, self.reactor, hosts, message, self.options, disk=self.disk,
                               cache=self.sessions)

    def _outcomes(self, envelope: Envelope, recipients: list[Recipient], outcome: Any) -> list[Recipient]:
        retry_at = self._retry_at([r for r in recipients
                                   if not (outcome.result_for(str(r.target)).delivered
                                           or outcome.result_for(str(r.target)).permanent)])
        updated = []
        for r in recipients:
            result = outcome.result_for(str(r.target))
            host = result.host or ""
            if result.delivered:
                r = r.with_state(state=DELIVERED, attempts=r.attempts + 1, last_error="", status="2.0.0",
                                 remote_mta=host, next_attempt=0.0)
                self._log(envelope, r, "sent", outcome, result.reply)
            elif result.permanent:
                r = self._failed(envelope, r, result.reply, result.enhanced_status, host if result.remote else "")
                self._log(envelope, r, "bounced", outcome)
            else:
                r = self._deferred(envelope, r, result.reply, result.enhanced_status, host if result.remote else "",
                                   retry_at)
                self._log(envelope, r, "deferred" if r.state != FAILED else "bounced", outcome)
            updated.append(r)
        return updated

    def _failed(self, envelope: Envelope, r: Recipient, reason: str, status: str, host: str) -> Recipient:
        return r.with_state(state=FAILED, attempts=r.attempts + 1, last_error=reason, status=status,
                            remote_mta=host)

    def _retry_at(self, failed_together: list[Recipient]) -> float:
        """
        When to try again the recipients of one transaction (one message,
        one destination) that failed temporarily together: one time for
        all of them, with one draw of the jitter, so that they are retried
        together, in one transaction, not one connection each. The backoff
        is that of the most-tried of them.

        @return: the Unix time of the next attempt (0 for none).
        """
        if not failed_together:
            return 0.0
        failures = max(_consecutive_failures(r) for r in failed_together) + 1
        return self.clock.seconds() + self.retry.delay(failures, self._random)

    def _deferred(self, envelope: Envelope, r: Recipient, reason: str, status: str, host: str,
                  retry_at: float) -> Recipient:
        now = self.clock.seconds()
        expires = envelope.arrival + self.retry.lifetime
        attempts = r.attempts + 1
        if now >= expires:
            return r.with_state(state=FAILED, attempts=attempts, status="4.4.7", remote_mta=host,
                                last_error=expired_error(envelope, now, reason))
        return r.with_state(attempts=attempts, last_error=reason, status=status, remote_mta=host,
                            next_attempt=min(retry_at, expires))

    def _log(self, envelope: Envelope, r: Recipient, status: str, outcome: Any, reply: str | None = None) -> None:
        if outcome is not None and outcome.host:
            relay = f"{outcome.host}[{outcome.address}]:{outcome.port}"
            tls = f"{outcome.tls_protocol}/{outcome.tls_cipher}" if outcome.tls else "no"
        else:
            relay, tls = "none", "no"
        text = reply if reply is not None else r.last_error
        self.log.info(
            "qid={qid} to=<{to}> relay={relay} delay={delay:.1f} tls={tls} status={status} dsn={dsn} reply={reply}",
            qid=envelope.queue_id, to=log_address(r.target), relay=relay, delay=self.clock.seconds() - envelope.arrival,
            tls=tls, status=status, dsn=r.status or "-", reply=quote(text),
        )


def _too_many_recipients(result: Any) -> bool:
    """
    Whether a recipient was refused only for the number of recipients in
    its transaction (C{452 4.5.3}, or a 552 taken as such).
    """
    return (not result.delivered and not result.permanent and result.remote
            and (result.enhanced_status == "4.5.3" or result.reply.startswith("452 ")))


def _consecutive_failures(r: Recipient) -> int:
    # Every earlier attempt of a still-pending recipient failed.
    return r.attempts
