"""
Tests for L{mailappliance.smtp.lines}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.smtp.lines import (
    BARE_LF,
    MAX_AUTH_LINE,
    MAX_COMMAND_LINE,
    MAX_MAIL_RCPT_LINE,
    OVERLONG,
    CommandLineReader,
    limit_for_command,
)


def read_all(reader: CommandLineReader) -> list:
    lines = []
    while True:
        line = reader.next_line()
        if line is None:
            return lines
        lines.append(line)


class LimitTests(SynchronousTestCase):
    def test_limits(self) -> None:
        """
        MAIL and RCPT (any case) get 1024 octets, AUTH 12288, everything
        else 512.
        """
        self.assertEqual(limit_for_command(b"MAIL "), MAX_MAIL_RCPT_LINE)
        self.assertEqual(limit_for_command(b"rcpt "), MAX_MAIL_RCPT_LINE)
        self.assertEqual(limit_for_command(b"AUTH "), MAX_AUTH_LINE)
        self.assertEqual(limit_for_command(b"EHLO "), MAX_COMMAND_LINE)
        self.assertEqual(limit_for_command(b"MAIL"), MAX_COMMAND_LINE)
        self.assertEqual((MAX_COMMAND_LINE, MAX_MAIL_RCPT_LINE, MAX_AUTH_LINE), (512, 1024, 12288))


class CommandLineReaderTests(SynchronousTestCase):
    def test_lines(self) -> None:
        """
        Lines end with CRLF only; a bare CR stays in the line, a line that
        a bare LF ends is reported as L{BARE_LF}, without its bytes.
        """
        reader = CommandLineReader()
        reader.feed(b"NOOP\r\nA\nB\rC\r\npartial")
        self.assertEqual(read_all(reader), [b"NOOP", BARE_LF, b"B\rC"])
        self.assertEqual(reader.buffered, len(b"partial"))
        reader.feed(b"\r")
        self.assertIsNone(reader.next_line())
        reader.feed(b"\n")
        self.assertEqual(read_all(reader), [b"partial"])
        self.assertEqual(reader.buffered, 0)

    def test_every_split(self) -> None:
        """
        A stream split anywhere gives the same lines.
        """
        stream = b"EHLO x\r\nMAIL FROM:<a@b>\r\n\r\nQUIT\r\n"
        for offset in range(len(stream) + 1):
            reader = CommandLineReader()
            reader.feed(stream[:offset])
            lines = read_all(reader)
            reader.feed(stream[offset:])
            lines += read_all(reader)
            self.assertEqual(lines, [b"EHLO x", b"MAIL FROM:<a@b>", b"", b"QUIT"], offset)

    def test_bare_lf(self) -> None:
        """
        Each line ended by a bare LF is dropped up to and including the LF
        and reported once as L{BARE_LF}, at once (no CRLF is waited for);
        an LF alone is such a line, and a CR before a CRLF stays in its
        line.
        """
        reader = CommandLineReader()
        reader.feed(b"EHLO x\n")
        self.assertEqual(read_all(reader), [BARE_LF])
        self.assertEqual(reader.buffered, 0)
        reader.feed(b"QUIT\n\nNOOP\r\nRSET\r\r\nMAIL")
        self.assertEqual(read_all(reader), [BARE_LF, BARE_LF, b"NOOP", b"RSET\r"])
        self.assertEqual(reader.buffered, len(b"MAIL"))

    def test_dropped_prefix(self) -> None:
        """
        The first five bytes of the last line reported as L{BARE_LF} or
        L{OVERLONG} are kept, to tell its verb.
        """
        reader = CommandLineReader()
        reader.feed(b"BDAT 5\n")
        self.assertEqual(read_all(reader), [BARE_LF])
        self.assertEqual(reader.dropped_prefix, b"BDAT ")
        reader.feed(b"NOOP\r\nQU\n")
        self.assertEqual(read_all(reader), [b"NOOP", BARE_LF])
        self.assertEqual(reader.dropped_prefix, b"QU")
        reader.feed(b"bdat " + b"9" * MAX_COMMAND_LINE)
        self.assertEqual(read_all(reader), [])
        reader.feed(b"\n")
        self.assertEqual(read_all(reader), [BARE_LF])
        self.assertEqual(reader.dropped_prefix, b"bdat ")
        reader.feed(b"RSET " + b"x" * MAX_COMMAND_LINE + b"\r\n")
        self.assertEqual(read_all(reader), [OVERLONG])
        self.assertEqual(reader.dropped_prefix, b"RSET ")

    def test_bare_lf_every_split(self) -> None:
        """
        Wherever the stream is cut, bare LFs and CRLFs give the same
        items; a CR at the end of one piece and an LF at the start of the
        next are a CRLF.
        """
        stream = b"EHLO x\nNOOP\r\n\nQUIT\r\n"
        for offset in range(len(stream) + 1):
            reader = CommandLineReader()
            reader.feed(stream[:offset])
            items = read_all(reader)
            reader.feed(stream[offset:])
            items += read_all(reader)
            self.assertEqual(items, [BARE_LF, b"NOOP", BARE_LF, b"QUIT"], offset)

    def test_overlong_ended_by_bare_lf(self) -> None:
        """
        An over-long line that a bare LF ends is reported once, as
        L{BARE_LF}, whether it arrived whole or in pieces (and so was
        being dropped already); one that a CRLF ends is L{OVERLONG}.
        """
        long_line = b"NOOP " + b"x" * MAX_COMMAND_LINE
        for end, report in ((b"\n", BARE_LF), (b"\r\n", OVERLONG)):
            whole = CommandLineReader()
            whole.feed(long_line + end + b"NOOP\r\n")
            self.assertEqual(read_all(whole), [report, b"NOOP"], end)
            pieces = CommandLineReader()
            pieces.feed(long_line)
            self.assertEqual(read_all(pieces), [])
            self.assertEqual(pieces.buffered, 0)
            for byte in end:
                pieces.feed(bytes([byte]))
            pieces.feed(b"NOOP\r\n")
            self.assertEqual(read_all(pieces), [report, b"NOOP"], end)

    def test_exact_limit(self) -> None:
        """
        A line of exactly 512 octets with its CRLF is accepted; 513 is not.
        """
        reader = CommandLineReader()
        ok = b"NOOP " + b"x" * (MAX_COMMAND_LINE - 7)
        reader.feed(ok + b"\r\n")
        self.assertEqual(read_all(reader), [ok])
        reader.feed(ok + b"y\r\n")
        self.assertEqual(read_all(reader), [OVERLONG])

    def test_exact_limit_byte_by_byte(self) -> None:
        """
        The limit holds when the line arrives one byte at a time, also
        when the CR of the CRLF is the last byte that fits.
        """
        for extra, expected in ((b"", [b"NOOP " + b"x" * 505]), (b"y", [OVERLONG])):
            reader = CommandLineReader()
            got = []
            for byte in b"NOOP " + b"x" * 505 + extra + b"\r\nQUIT\r\n":
                reader.feed(bytes([byte]))
                got += read_all(reader)
            self.assertEqual(got, expected + [b"QUIT"])

    def test_mail_limit(self) -> None:
        """
        MAIL lines may be up to 1024 octets.
        """
        reader = CommandLineReader()
        line = b"MAIL FROM:<a@b> " + b"X" * (MAX_MAIL_RCPT_LINE - 18)
        reader.feed(line + b"\r\n" + line + b"X\r\n")
        self.assertEqual(read_all(reader), [line, OVERLONG])

    def test_overlong_drained_without_memory(self) -> None:
        """
        An endless line is dropped as it arrives: the buffer stays below
        the limit however much is sent, and the line is reported once,
        after its CRLF; the next line is read normally.
        """
        reader = CommandLineReader()
        reader.feed(b"NOOP ")
        for _ in range(1000):
            reader.feed(b"x" * 1000)
            self.assertIsNone(reader.next_line())
            self.assertLess(reader.buffered, MAX_COMMAND_LINE)
        reader.feed(b"\r")
        self.assertIsNone(reader.next_line())
        reader.feed(b"\nQUIT\r\n")
        self.assertEqual(read_all(reader), [OVERLONG, b"QUIT"])

    def test_overlong_crlf_split(self) -> None:
        """
        The CRLF ending an over-long line may be split across chunks,
        and a CR alone does not end it.
        """
        reader = CommandLineReader()
        reader.feed(b"y" * 600)
        self.assertIsNone(reader.next_line())
        reader.feed(b"\r")
        reader.feed(b"x\r")
        self.assertEqual(read_all(reader), [])
        reader.feed(b"\nNOOP\r\n")
        self.assertEqual(read_all(reader), [OVERLONG, b"NOOP"])

    def test_take_all_and_unread(self) -> None:
        """
        L{CommandLineReader.take_all} empties the reader;
        L{CommandLineReader.unread} puts bytes back in front.
        """
        reader = CommandLineReader()
        reader.feed(b"body\r\n.\r\nQU")
        self.assertEqual(reader.take_all(), b"body\r\n.\r\nQU")
        self.assertEqual(reader.buffered, 0)
        reader.feed(b"IT\r\n")
        reader.unread(b"RSET\r\nQU")
        self.assertEqual(read_all(reader), [b"RSET", b"QUIT"])

    def test_take(self) -> None:
        """
        L{CommandLineReader.take} removes at most the given number of held
        bytes, as they are (a BDAT chunk), leaving the rest to be read as
        lines.
        """
        reader = CommandLineReader()
        reader.feed(b"ab\r\n.\r\nNOOP\r\n")
        self.assertEqual(reader.take(0), b"")
        self.assertEqual(reader.take(7), b"ab\r\n.\r\n")
        self.assertEqual(reader.buffered, 6)
        self.assertEqual(read_all(reader), [b"NOOP"])
        reader.feed(b"xyz")
        self.assertEqual(reader.take(10), b"xyz")
        self.assertEqual((reader.take(5), reader.buffered), (b"", 0))

    def test_clear(self) -> None:
        """
        L{CommandLineReader.clear} forgets held bytes and an over-long line
        in progress.
        """
        reader = CommandLineReader()
        reader.feed(b"x" * 600)
        reader.next_line()
        reader.clear()
        reader.feed(b"NOOP\r\n")
        self.assertEqual(read_all(reader), [b"NOOP"])
