"""
Tests for L{mailappliance.smtp.data}: the body is decoded the same way
whatever the chunk boundaries, so every case is run with the input split
at every offset (and at every pair of offsets for the short ones).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.smtp.data import DataReader


def decode(chunks: list[bytes]) -> tuple[bytes, bytes | None, bool]:
    """
    Feed chunks to a new reader until the data ends.

    @return: the body, the bytes after the end (L{None} if it did not
        end), and whether a bare line end was seen.
    """
    reader = DataReader()
    body = b""
    for index, chunk in enumerate(chunks):
        out, rest = reader.feed(chunk)
        body += out
        if rest is not None:
            return body, rest + b"".join(chunks[index + 1 :]), reader.bare_line_end
    return body, None, reader.bare_line_end


# (stream after 354, body, bytes after the end, bare line end seen)
CASES = [
    (b".\r\n", b"", b"", False),
    (b".\r\nQUIT\r\n", b"", b"QUIT\r\n", False),
    (b"a\r\n.\r\n", b"a\r\n", b"", False),
    (b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n", b"Subject: x\r\n\r\nbody\r\n", b"QUIT\r\n", False),
    # Dot-unstuffing, including the first line and consecutive dots.
    (b"..\r\n.\r\n", b".\r\n", b"", False),
    (b"..a\r\n...b\r\nc.d\r\n.\r\n", b".a\r\n..b\r\nc.d\r\n", b"", False),
    (b"x\r\n..\r\n.\r\n", b"x\r\n.\r\n", b"", False),
    (b". \r\n.\r\n", b" \r\n", b"", False),
    # A line that only starts like the end is data.
    (b".x\r\n.\r\n", b"x\r\n", b"", False),
    (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\r\n", b"", True),
    # An empty body line before the end.
    (b"\r\n.\r\n", b"\r\n", b"", False),
    # Smuggling vectors: never an end; seen as bare line ends.
    (b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n", b"a\n.\nMAIL FROM:<x@y>\r\n", b"", True),
    (b"a\r.\rMAIL\r\n.\r\n", b"a\r.\rMAIL\r\n", b"", True),
    (b"a\n.\r\nMAIL\r\n.\r\n", b"a\n.\r\nMAIL\r\n", b"", True),
    (b"a\r\n.\nMAIL\r\n.\r\n", b"a\r\n\nMAIL\r\n", b"", True),
    (b"a\r\n.\rMAIL\r\n.\r\n", b"a\r\n\rMAIL\r\n", b"", True),
    (b"a\r\r\n.\r\n", b"a\r\r\n", b"", True),
    (b"\n.\r\n", None, None, True),
    (b"\r.\r\n", None, None, True),
    (b"a\rb\r\n.\r\n", b"a\rb\r\n", b"", True),
    (b"a\nb\r\n.\r\n", b"a\nb\r\n", b"", True),
    # A trailing CR may yet be followed by LF: not known to be bare.
    (b"ends with CR\r", None, None, False),
    # Not ended yet.
    (b"a\r\n.\r", None, None, False),
    (b"a\r\n.", None, None, False),
    (b"", None, None, False),
]


class DataReaderTests(SynchronousTestCase):
    def check(self, stream: bytes, body: bytes | None, rest: bytes | None, bare: bool) -> None:
        for first in range(len(stream) + 1):
            for second in range(first, len(stream) + 1):
                chunks = [stream[:first], stream[first:second], stream[second:]]
                got_body, got_rest, got_bare = decode(chunks)
                where = (stream, first, second)
                self.assertEqual(got_rest, rest, where)
                if body is not None:
                    self.assertEqual(got_body, body, where)
                self.assertEqual(got_bare, bare, where)

    def test_cases(self) -> None:
        """
        Every case decodes to the expected body, end and bare-line-end flag
        with the stream split at every pair of offsets.
        """
        for case in CASES:
            self.check(*case)

    def test_unended_body_is_held_back_only_by_a_marker_prefix(self) -> None:
        """
        Until the end, everything but a possible start of the end marker
        (at most four bytes) is given out at once.
        """
        reader = DataReader()
        self.assertEqual(reader.feed(b"abc\r\n.\r"), (b"abc", None))
        self.assertEqual(reader.feed(b"x"), (b"\r\n\rx", None))
        self.assertEqual(reader.feed(b"\r\n"), (b"", None))
        self.assertEqual(reader.feed(b".\r\nNOOP"), (b"\r\n", b"NOOP"))
        self.assertTrue(reader.done)
        self.assertRaises(RuntimeError, reader.feed, b"")

    def test_every_offset_long_body(self) -> None:
        """
        A body mixing long and short lines, stuffed lines and an end marker
        followed by commands decodes identically when split at every
        single offset, and when fed one byte at a time.
        """
        body = b"".join(
            [b"From: a@b\r\n", b"\r\n", b"." * 3 + b"\r\n", b"x" * 3000 + b"\r\n", b".y\r\n", b"\r\n", b"..\r\n"]
        )
        stuffed = body.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        stream = stuffed + b".\r\nQUIT\r\n"
        for offset in range(len(stream) + 1):
            self.assertEqual(decode([stream[:offset], stream[offset:]]), (body, b"QUIT\r\n", False), offset)
        self.assertEqual(decode([bytes([b]) for b in stream]), (body, b"QUIT\r\n", False))

    def test_discarding(self) -> None:
        """
        While discarding, no body is given out, but the end is still found.
        """
        reader = DataReader()
        reader.feed(b"abc\r\n")
        reader.discarding = True
        self.assertEqual(reader.feed(b"more\r\n..\r\n"), (b"", None))
        self.assertEqual(reader.feed(b".\r\nRSET\r\n"), (b"", b"RSET\r\n"))

    def test_bare_line_end_across_chunks(self) -> None:
        """
        A CR at the end of one chunk followed by a non-LF at the start of
        the next is a bare CR; followed by LF it is a line end.
        """
        reader = DataReader()
        reader.feed(b"a\r")
        reader.feed(b"\nb\r")
        self.assertFalse(reader.bare_line_end)
        reader.feed(b"c")
        self.assertTrue(reader.bare_line_end)
        reader = DataReader()
        reader.feed(b"a")
        reader.feed(b"\nb")
        self.assertTrue(reader.bare_line_end)
