# -*- test-case-name: tests.test_queue_manager -*-
"""
The outcomes of the queue manager's deliveries, kept in one place for its
rounds (L{mailappliance.queue.rounds}) and its direct delivery
(L{mailappliance.queue.direct}) alike: how an attempt is recorded on a
recipient, the log lines of a recipient's outcome (one event each,
key=value, with the queue id; the whole list is in
L{mailappliance.queue.manager}), and the history of the last hour that
C{mailappliance status} counts.

L{OutcomeLog} is a mixin of L{mailappliance.queue.manager.QueueManager}.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.logger import Logger

from mailappliance.address import log_address
from mailappliance.logtext import quote, value
from mailappliance.queue.envelope import Recipient

# Outcomes remembered for "mailappliance status" (deliveries and bounces
# over the last hour).
HISTORY_SECONDS = 3600.0


def age_text(seconds: float) -> str:
    """
    A message's age as it is written in an expiry error: C{"5d"}, C{"4h"}.
    """
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def expired_error(envelope: Any, now: float, reason: str) -> str:
    """
    The error of a recipient given up on after the queue lifetime (status
    4.4.7), local or relayed: the message's age and the last error.
    """
    return f"message expired after {age_text(now - envelope.arrival)} in the queue; last error: {reason}"


def after_attempt(recipient: Recipient, **changes: Any) -> Recipient:
    """
    @return: C{recipient} after one more delivery attempt, with C{changes}
        (as for L{Recipient.with_state}).
    """
    return recipient.with_state(attempts=recipient.attempts + 1, **changes)


class OutcomeLog:
    """
    The outcome log lines and the history of the queue manager, a mixin of
    L{mailappliance.queue.manager.QueueManager}.

    Uses the manager's C{log}, C{retry_delay} and C{history} (the
    outcomes of the last L{HISTORY_SECONDS}, as C{(time, state)}).
    """

    log: Logger
    retry_delay: float
    history: deque[tuple[float, str]]

    def _forget_old_history(self, now: float) -> None:
        while self.history and self.history[0][0] < now - HISTORY_SECONDS:
            self.history.popleft()

    def _log_delivered(self, qid: str, target: Any, path: str) -> None:
        self.log.info("qid={qid} to=<{to}> status=delivered path={path}", qid=qid, to=log_address(target),
                      path=value(path))

    def _log_deferred(self, qid: str, target: Any, reason: str, delay: float | None = None) -> None:
        self.log.info(
            "qid={qid} to=<{to}> status=deferred reason={reason} delay={delay:g}",
            qid=qid,
            to=log_address(target),
            reason=quote(reason),
            delay=round(self.retry_delay if delay is None else delay),
        )

    def _log_failed(self, qid: str, target: Any, reason: str) -> None:
        self.log.warn(  # noqa: G010 -- twisted.logger.Logger has no warning()
            "qid={qid} to=<{to}> status=failed reason={reason}", qid=qid, to=log_address(target), reason=quote(reason)
        )
