"""
Tests for L{mailappliance.episodes}.
"""

from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.episodes import FailureEpisodes


class EpisodeTests(SynchronousTestCase):
    def test_once_per_episode(self):
        """
        The first failure is logged with its traceback, the rest counted; a
        success ends the episode with one line; the next failure logs again.
        """
        events = []
        episodes = FailureEpisodes(Logger(observer=events.append))
        for _ in range(3):
            episodes.failed("spool", Failure(OSError(28, "No space left on device")), qid="Q")
        self.assertTrue(episodes.in_trouble("spool"))
        episodes.succeeded("spool")
        episodes.succeeded("spool")
        episodes.failed("spool", Failure(OSError(5, "EIO")), qid="R")
        lines = [formatEvent(e) for e in events]
        self.assertEqual(lines, ["event=error what=spool status=failing qid=Q",
                                 "event=recovered what=spool failures=3",
                                 "event=error what=spool status=failing qid=R"])
        self.assertIn("log_failure", events[0])
        self.flushLoggedErrors(OSError)
