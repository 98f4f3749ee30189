"""
Tests for L{mailappliance.pop3.lines}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.pop3.lines import MAX_COMMAND_LINE, OVERLONG, LineReader


def drain(reader: LineReader) -> list:
    out = []
    while (line := reader.next_line()) is not None:
        out.append(line)
    return out


class LineReaderTests(SynchronousTestCase):
    def test_lines(self):
        """
        CRLF and bare LF end lines; the line end is removed; other bytes
        (a bare CR, NUL, non-UTF-8) are kept.
        """
        r = LineReader()
        r.feed(b"NOOP\r\nLIST 1\nA\rB\x00\xff\r\npartial")
        self.assertEqual(drain(r), [b"NOOP", b"LIST 1", b"A\rB\x00\xff"])
        self.assertEqual(r.buffered, len(b"partial"))
        r.feed(b"\r\n")
        self.assertEqual(drain(r), [b"partial"])

    def test_limit_exact(self):
        """
        A line of 255 octets with its CRLF passes; one octet more is
        L{OVERLONG}, and the next line is read normally.
        """
        r = LineReader()
        ok = b"x" * (MAX_COMMAND_LINE - 2)
        r.feed(ok + b"\r\n" + ok + b"y\r\nNOOP\r\n")
        self.assertEqual(drain(r), [ok, OVERLONG, b"NOOP"])

    def test_endless_line_bounded(self):
        """
        The bytes of an endless line are dropped as they come: the buffer
        never holds more than one limit, and once the line ends it is one
        L{OVERLONG}.
        """
        r = LineReader()
        for _ in range(1000):
            r.feed(b"z" * 1000)
            self.assertEqual(r.next_line(), None)
            self.assertLessEqual(r.buffered, 1000 + MAX_COMMAND_LINE)
        r.feed(b"zz\r\nNOOP\r\n")
        self.assertEqual(drain(r), [OVERLONG, b"NOOP"])

    def test_limit_per_line(self):
        """
        The limit comes from the start of each line.
        """
        r = LineReader(lambda start: 4096 if start.upper().startswith(b"AUTH ") else MAX_COMMAND_LINE)
        long_auth = b"AUTH PLAIN " + b"A" * 1000
        r.feed(long_auth + b"\r\n" + b"NOOP " + b"A" * 1000 + b"\r\n")
        self.assertEqual(drain(r), [long_auth, OVERLONG])

    def test_clear(self):
        """
        L{LineReader.clear} drops everything, an overlong line in progress
        included.
        """
        r = LineReader()
        r.feed(b"x" * 300)
        r.next_line()
        r.feed(b"USER evil\r\n")
        r.clear()
        r.feed(b"NOOP\r\n")
        self.assertEqual(drain(r), [b"NOOP"])
