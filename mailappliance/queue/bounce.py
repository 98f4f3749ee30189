# -*- test-case-name: tests.test_queue_bounce -*-
"""
Telling senders what became of their mail: the L{Notifier} the queue
manager consults after every delivery round of a message.

  - Recipients that failed and were not yet reported get one RFC 3464 DSN
    (L{mailappliance.queue.dsn}) to the envelope sender, queued with the
    null sender (so it can never cause another bounce).
  - Never to the null sender: the failures of a message with the null
    sender (a bounce that bounced) go to the postmaster instead, as a
    "double bounce"; a double bounce that fails is only logged.
  - Once, after C{delay_warning_after}, a delay warning for the recipients
    still pending (unless that setting is 0).

A recipient is marked C{notified} (and the envelope C{delay_warned}) in the
envelope the notifier returns; the manager writes it durably with the
round's outcomes. A crash between the DSN's commit and that write sends the
DSN twice, never zero times. A DSN that cannot be queued now (a temporary
resolution error, a full disk) leaves the flags unset, and the manager
keeps the message until it can.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailappliance.address import log_address
from mailappliance.interfaces import ResolutionError
from mailappliance.logtext import quote
from mailappliance.queue.dsn import (
    DELAYED,
    RecipientReport,
    build_dsn,
    read_original_headers,
)
from mailappliance.queue.dsn import FAILED as ACTION_FAILED
from mailappliance.queue.envelope import FAILED, PENDING, Envelope
from mailappliance.queue.inject import NoDeliverableRecipient, inject

DSN = "dsn"
DOUBLE_BOUNCE = "double-bounce"

_default_log = Logger(namespace="mailappliance.queue")


class Notifier:
    """
    Sends bounces and delay warnings through the queue.

    @param spool: the L{mailappliance.queue.spool.Spool}.
    @param resolver: the resolver chain (the DSN's recipient is resolved
        like any other).
    @param disk: the disk pool (reading the original headers).
    @param clock: C{seconds()}.
    @param hostname: our host name (C{MAILER-DAEMON@hostname}).
    @param postmaster: the postmaster's L{Mailbox}.
    @param delay_warning_after: seconds; 0 disables delay warnings.
    @param max_queue_lifetime: seconds (the delay warning says until when
        retries go on).
    """

    def __init__(self, spool: Any, resolver: Any, disk: Any, clock: Any, hostname: str, postmaster: Any,
                 delay_warning_after: float = 0.0, max_queue_lifetime: float = 5 * 86400.0,
                 log: Logger | None = None) -> None:
        self.spool = spool
        self.resolver = resolver
        self.disk = disk
        self.clock = clock
        self.hostname = hostname
        self.postmaster = postmaster
        self.delay_warning_after = delay_warning_after
        self.max_queue_lifetime = max_queue_lifetime
        self.log = log if log is not None else _default_log

    def owes_notice(self, envelope: Envelope) -> bool:
        """
        Whether a failure of this message is still to be reported (the
        manager must not remove the message before).
        """
        return any(r.state == FAILED and not r.notified for r in envelope.recipients)

    @defer.inlineCallbacks
    def after_round(self, envelope: Envelope):
        """
        Send what is due for this message.

        @return: a L{Deferred} firing with the envelope, with C{notified}
            and C{delay_warned} set for what was sent. It does not fail: a
            notice that could not be queued is logged and left for the next
            round.
        """
        failed = [r for r in envelope.recipients if r.state == FAILED and not r.notified]
        if failed:
            sent = yield self._send(envelope, failed, ACTION_FAILED)
            if sent:
                envelope = envelope.replace(recipients=tuple(
                    r.with_state(notified=True) if r.state == FAILED else r for r in envelope.recipients))
        if self._delay_warning_due(envelope):
            pending = [r for r in envelope.recipients if r.state == PENDING and (not r.local or r.attempts > 0)]
            sent = yield self._send(envelope, pending, DELAYED)
            if sent:
                envelope = envelope.replace(delay_warned=True)
        return envelope

    def _delay_warning_due(self, envelope: Envelope) -> bool:
        if self.delay_warning_after <= 0 or envelope.delay_warned or envelope.sender is None:
            return False
        if self.clock.seconds() - envelope.arrival < self.delay_warning_after:
            return False
        return any(r.state == PENDING and r.attempts > 0 for r in envelope.recipients)

    @defer.inlineCallbacks
    def _send(self, envelope: Envelope, recipients: list, action: str):
        qid = envelope.queue_id
        if envelope.sender is not None:
            to, kind = envelope.sender, DSN
        elif envelope.kind != DOUBLE_BOUNCE and action == ACTION_FAILED:
            to, kind = self.postmaster, DOUBLE_BOUNCE
        else:
            for r in recipients:
                self.log.warn("qid={qid} to=<{to}> status=undeliverable reason={reason}", qid=qid,
                              to=log_address(r.target), reason=quote("double bounce dropped: " + r.last_error))
            return True
        reports = [
            RecipientReport(
                recipient=str(r.target),
                original=str(r.original),
                status=r.status or ("5.0.0" if action == ACTION_FAILED else "4.0.0"),
                diagnostic=r.last_error or "delivery failed",
                remote_mta=r.remote_mta,
                smtp_reply=bool(r.remote_mta) and r.last_error[:3].isdigit(),
            )
            for r in recipients
        ]
        try:
            headers = yield self.disk.run(read_original_headers, self.spool.body_path(qid), envelope.size)
        except OSError:
            headers = b""
        now = self.clock.seconds()
        while True:
            data = build_dsn(
                hostname=self.hostname, queue_id=qid, sender=str(envelope.sender or ""), arrival=envelope.arrival,
                reports=reports, original_headers=headers, now=now, action=action,
                retry_until=envelope.arrival + self.max_queue_lifetime,
                postmaster=str(to) if kind == DOUBLE_BOUNCE else "",
            )
            try:
                dsn = yield inject(self.spool, self.resolver, self.clock, hostname=self.hostname, sender=None,
                                   recipients=[to], data=data, via="dsn", kind=kind,
                                   eight_bit=not data.isascii())
            except NoDeliverableRecipient as e:
                self.log.warn("qid={qid} status=dsn-undeliverable to=<{to}> reason={reason}", qid=qid,
                              to=log_address(to), reason=quote(str(e)))
                if kind == DSN and action == ACTION_FAILED:
                    # The sender is in one of our domains but is nobody
                    # (cron's root with no account or alias): the report
                    # goes to the postmaster, as a double bounce does.
                    to, kind = self.postmaster, DOUBLE_BOUNCE
                    continue
                return True
            except (ResolutionError, OSError) as e:
                self.log.error("qid={qid} status=dsn-deferred to=<{to}> reason={reason}", qid=qid,
                               to=log_address(to), reason=quote(getattr(e, "reason", None) or str(e)))
                return False
            break
        self.log.info("qid={qid} status={status} dsn={dsn} to=<{to}> nrcpt={n}", qid=qid,
                      status="bounced" if action == ACTION_FAILED else "delay-warned",
                      dsn=dsn.queue_id, to=log_address(to), n=len(recipients))
        return True
