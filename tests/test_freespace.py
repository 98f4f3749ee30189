"""
Tests for L{mailappliance.freespace}.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.disk import SynchronousDiskPool
from mailappliance.freespace import FreeSpaceMonitor, free_bytes


class FreeSpaceTests(SynchronousTestCase):
    def test_free_bytes(self):
        """
        The least free space of the paths' file systems.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        stats = os.statvfs(path)
        self.assertEqual(free_bytes([path, path]), stats.f_bavail * stats.f_frsize)

    def test_monitor(self):
        """
        The monitor looks at start and every interval; a size needs one and
        a half times its bytes free; before a look, or after a failed one,
        nothing is refused.
        """
        seen = iter([1500, 900, OSError("gone")])

        def fake_free(paths):
            value = next(seen)
            if isinstance(value, Exception):
                raise value
            return value

        self.patch(__import__("mailappliance.freespace", fromlist=["x"]), "free_bytes", fake_free)
        clock = Clock()
        monitor = FreeSpaceMonitor(["/x"], SynchronousDiskPool(), clock, interval=5)
        self.assertFalse(monitor.too_little_for(10 ** 12))
        monitor.startService()
        self.addCleanup(monitor.stopService)
        self.assertEqual(monitor.free, 1500)
        self.assertFalse(monitor.too_little_for(1000))
        self.assertTrue(monitor.too_little_for(1001))
        clock.advance(5)
        self.assertEqual(monitor.free, 900)
        clock.advance(5)
        self.assertIsNone(monitor.free)
        self.assertFalse(monitor.too_little_for(10 ** 12))
