# -*- test-case-name: tests.test_episodes -*-
"""
Logging a recurring failure once per episode.

When the disk fills up, every message fails the same way until space
returns; logging a traceback per message would flood the log (and the disk
that is already full). L{FailureEpisodes} logs the first failure of a kind
with its traceback, counts the rest silently, and logs one line when the
next success ends the episode.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure


class FailureEpisodes:
    def __init__(self, log: Logger) -> None:
        self.log = log
        self._failures: dict[str, int] = {}

    def in_trouble(self, kind: str) -> bool:
        return kind in self._failures

    def failed(self, kind: str, reason: Failure, **fields: Any) -> None:
        """
        A failure of C{kind}: logged (with traceback) only if it starts an
        episode.
        """
        count = self._failures.get(kind, 0)
        self._failures[kind] = count + 1
        if count == 0:
            self.log.failure(" ".join(["event=error what={what} status=failing", *(f"{k}={{{k}}}" for k in fields)]),
                             reason, what=kind, **fields)

    def succeeded(self, kind: str) -> None:
        """
        A success of C{kind}: ends its episode, if any, with one log line.
        """
        count = self._failures.pop(kind, None)
        if count is not None:
            self.log.info("event=recovered what={what} failures={count}", what=kind, count=count)
