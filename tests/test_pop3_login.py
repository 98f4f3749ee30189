"""
Tests for L{mailappliance.pop3.login}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.pop3 import login
from mailappliance.pop3.login import FAILURE_MEMORY, LoginThrottle


class LoginThrottleTests(SynchronousTestCase):
    def test_doubling(self):
        """
        1, 2, 4, 8, 16, then 16 seconds.
        """
        t = LoginThrottle(Clock())
        self.assertEqual([t.record_failure("192.0.2.1") for _ in range(7)], [1, 2, 4, 8, 16, 16, 16])

    def test_per_peer(self):
        """
        Another address starts at 1 second.
        """
        t = LoginThrottle(Clock())
        t.record_failure("192.0.2.1")
        t.record_failure("192.0.2.1")
        self.assertEqual(t.record_failure("192.0.2.2"), 1)
        self.assertEqual(t.recent_failures("192.0.2.1"), 2)

    def test_forgotten(self):
        """
        Failures are forgotten L{FAILURE_MEMORY} after the last one.
        """
        clock = Clock()
        t = LoginThrottle(clock)
        t.record_failure("192.0.2.1")
        clock.advance(FAILURE_MEMORY - 1)
        self.assertEqual(t.record_failure("192.0.2.1"), 2)
        clock.advance(FAILURE_MEMORY)
        self.assertEqual(t.recent_failures("192.0.2.1"), 0)
        self.assertEqual(t.record_failure("192.0.2.1"), 1)

    def test_success_resets(self):
        """
        A successful login forgets the address's failures.
        """
        t = LoginThrottle(Clock())
        t.record_failure("192.0.2.1")
        t.record_success("192.0.2.1")
        self.assertEqual(t.record_failure("192.0.2.1"), 1)

    def test_bounded(self):
        """
        At most L{login.MAX_TRACKED_PEERS} addresses are remembered, the
        least recently failing dropped first.
        """
        self.patch(login, "MAX_TRACKED_PEERS", 3)
        t = LoginThrottle(Clock())
        for peer in ["a", "b", "c", "a", "d"]:
            t.record_failure(peer)
        self.assertEqual(t.recent_failures("b"), 0)
        self.assertEqual(t.recent_failures("a"), 2)
        self.assertEqual(len(t._failures), 3)
