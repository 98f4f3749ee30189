# -*- test-case-name: tests.test_accounts_verifier -*-
"""
Where password hashes are verified: a small thread pool of their own, with
a bounded queue.

An argon2id verification costs tens of milliseconds of CPU and 64 MiB of
memory. In the disk pool, a burst of logins (a password-guessing client
that does not wait for its answers, fetchmail every minute from a whole
office) would queue in front of every Maildir and queue write and hold up
each 250, and eight of them at once would take half a gigabyte. Here at
most L{PASSWORD_THREADS} run at once, and past L{MAX_WAITING} waiting a
login is answered "try again later" at once (SMTP 454 4.7.0, POP3
C{-ERR [SYS/TEMP]}) instead of growing the queue: the cost of a guessing
client is bounded, and mail keeps flowing.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail

from mailappliance.disk import DiskPool

PASSWORD_THREADS = 2
MAX_WAITING = 16


class TooManyLogins(Exception):
    """
    Too many password checks are waiting: this login is refused for now
    (a temporary failure, not a wrong password).
    """

    def __str__(self) -> str:
        return "too many logins at once"


class PasswordChecks:
    """
    Runs password verifications.

    @ivar pool: the pool they run in (C{run(f, *args) -> Deferred}).
    @ivar max_waiting: checks that may wait or run at once beyond which a
        new one fails with L{TooManyLogins}.
    """

    def __init__(self, pool: Any, max_waiting: int = MAX_WAITING) -> None:
        self.pool = pool
        self.max_waiting = max_waiting
        self._outstanding = 0

    @classmethod
    def in_own_threads(cls, reactor: Any) -> PasswordChecks:
        """
        Checks in a L{DiskPool} of L{PASSWORD_THREADS} threads of their
        own (a service: start it with the server).
        """
        pool = DiskPool(reactor, threads=PASSWORD_THREADS)
        pool.name = "passwords"
        return cls(pool)

    @property
    def outstanding(self) -> int:
        """
        Checks waiting or running.
        """
        return self._outstanding

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred:
        """
        Run one check, or fail at once with L{TooManyLogins}.
        """
        if self._outstanding >= self.max_waiting:
            return fail(TooManyLogins())
        self._outstanding += 1

        def done(result: Any) -> Any:
            self._outstanding -= 1
            return result

        return self.pool.run(function, *args).addBoth(done)
