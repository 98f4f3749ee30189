"""
Tests for L{mailappliance.logtext}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.logtext import quote


class QuoteTests(SynchronousTestCase):
    def test_plain(self):
        self.assertEqual(quote("no such user"), '"no such user"')

    def test_escapes(self):
        """
        Backslashes, quotes and line ends are escaped, so the value stays on
        one line and cannot end early.
        """
        self.assertEqual(quote('a "b" \\ c\r\nd=e'), '"a \\"b\\" \\\\ c\\r\\nd=e"')
