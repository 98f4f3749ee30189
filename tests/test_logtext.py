"""
Tests for L{mailappliance.logtext}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.logtext import next_session_id, quote, value


class QuoteTests(SynchronousTestCase):
    def test_plain(self):
        self.assertEqual(quote("no such user"), '"no such user"')

    def test_escapes(self):
        """
        Backslashes, quotes and line ends are escaped, so the value stays on
        one line and cannot end early.
        """
        self.assertEqual(quote('a "b" \\ c\r\nd=e'), '"a \\"b\\" \\\\ c\\r\\nd=e"')

    def test_controls(self):
        """
        Other control characters (a remote reply with a terminal escape
        sequence) are written as C{\\xNN}; other text is kept.
        """
        self.assertEqual(quote("550 Empf\u00e4nger \x01\x1b[31m\x7f\x9b\ttab"),
                         '"550 Empf\u00e4nger \\x01\\x1b[31m\\x7f\\x9b\\x09tab"')


class ValueTests(SynchronousTestCase):
    def test_word_or_quoted(self):
        """
        A plain word (a Maildir path, with its C{=}) stays as it is; a value
        with a space, a quote or a control character, or an empty one, is
        quoted.
        """
        self.assertEqual(value("/var/mail/a/new/1.M2,S=10,W=12"), "/var/mail/a/new/1.M2,S=10,W=12")
        self.assertEqual(value("/var/my mail/x"), '"/var/my mail/x"')
        self.assertEqual(value('a"b'), '"a\\"b"')
        self.assertEqual(value(""), '""')


class SessionIdTests(SynchronousTestCase):
    def test_distinct(self):
        """
        Session ids are one word each, and never repeat in a process.
        """
        ids = [next_session_id() for _ in range(1000)]
        self.assertEqual(len(set(ids)), 1000)
        for one in ids:
            self.assertRegex(one, r"^[a-z2-7][0-9a-z]+$")
