# -*- test-case-name: tests.test_pop3_login -*-
"""
Slowing down password guessing: a delay before each failed-login reply
that doubles with each recent failure from the same peer address.

The delay is applied to the failing session only (the server schedules its
reply with C{clock.callLater}); other sessions, from the same address or
not, carry on. A session is also closed after L{MAX_FAILURES_PER_SESSION}
failures, so a guesser has to reconnect (and meet the connection limits).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

FIRST_FAILURE_DELAY = 1.0
MAX_FAILURE_DELAY = 16.0
MAX_FAILURES_PER_SESSION = 3

# A peer's failures are forgotten this long after its last one.
FAILURE_MEMORY = 15 * 60.0

# Bound on the peers remembered, so a flood of addresses (IPv6) costs a
# fixed amount of memory; the least recently failing are forgotten first.
MAX_TRACKED_PEERS = 10000


class LoginThrottle:
    """
    Failure counts per peer address, and the delay they earn.
    """

    def __init__(self, clock: Any) -> None:
        """
        @param clock: an L{IReactorTime} (its C{seconds()} is used).
        """
        self._clock = clock
        # peer -> (recent failures, time of the last one); oldest first
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def recent_failures(self, peer: str) -> int:
        """
        @return: the failures of C{peer} not yet forgotten.
        """
        entry = self._failures.get(peer)
        if entry is None:
            return 0
        count, last = entry
        if self._clock.seconds() - last >= FAILURE_MEMORY:
            del self._failures[peer]
            return 0
        return count

    def record_failure(self, peer: str) -> float:
        """
        Count a failed login of C{peer}.

        @return: the delay in seconds before the failure may be answered:
            L{FIRST_FAILURE_DELAY}, doubled for each earlier recent failure,
            at most L{MAX_FAILURE_DELAY}.
        """
        count = self.recent_failures(peer) + 1
        self._failures.pop(peer, None)
        self._failures[peer] = (count, self._clock.seconds())
        while len(self._failures) > MAX_TRACKED_PEERS:
            self._failures.popitem(last=False)
        return min(FIRST_FAILURE_DELAY * 2 ** min(count - 1, 32), MAX_FAILURE_DELAY)

    def record_success(self, peer: str) -> None:
        """
        Forget the failures of C{peer} after it logged in.
        """
        self._failures.pop(peer, None)
