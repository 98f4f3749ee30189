"""
Tests for L{mailappliance.accounts.verifier}.
"""

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.accounts.verifier import PASSWORD_THREADS, PasswordChecks, TooManyLogins


class ManualPool:
    def __init__(self):
        self.jobs = []

    def run(self, function, *args):
        d = Deferred()
        self.jobs.append((function, args, d))
        return d


class PasswordChecksTests(SynchronousTestCase):
    def test_bounded(self):
        """
        Past C{max_waiting} checks waiting or running, a new one fails at
        once with L{TooManyLogins}; as checks finish, room comes back.
        """
        pool = ManualPool()
        checks = PasswordChecks(pool, max_waiting=2)
        first = checks.run(len, "a")
        second = checks.run(len, "bb")
        self.assertEqual(checks.outstanding, 2)
        self.failureResultOf(checks.run(len, "ccc"), TooManyLogins)
        self.assertEqual(len(pool.jobs), 2)
        pool.jobs[0][2].callback(1)
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(checks.outstanding, 1)
        third = checks.run(len, "ccc")
        pool.jobs[1][2].errback(ValueError())
        self.failureResultOf(second, ValueError)
        pool.jobs[2][2].callback(3)
        self.assertEqual(self.successResultOf(third), 3)
        self.assertEqual(checks.outstanding, 0)

    def test_own_threads(self):
        """
        By default the checks have a thread pool of their own, a service
        apart from the disk pool.
        """
        checks = PasswordChecks.in_own_threads(MemoryReactor())
        self.assertEqual(checks.pool.max_threads, PASSWORD_THREADS)
        self.assertEqual(checks.pool.name, "passwords")
        self.assertEqual(str(TooManyLogins()), "too many logins at once")
