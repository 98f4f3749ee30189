# -*- test-case-name: tests.test_dotstuff -*-
"""
Tests for L{mailappliance.dotstuff}: dot-stuffing for SMTP and POP3, line
end normalisation, the TOP cut and the POP3 size, each checked against a
simple line-by-line reference with the input split at every offset.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.dotstuff import (
    DotStuffer,
    HeaderAndBodyLines,
    LineEndNormaliser,
    MessageTransform,
    wire_size,
)

TRICKY = [
    b"",
    b".",
    b"..",
    b".\r\n",
    b"..\r\n",
    b"\r\n",
    b"\r\n.",
    b"\r\n.\r\n",
    b"a\r\n.\r\nb\r\n",
    b".a\r\n.b\r\n..c\r\n",
    b"line\r\n.\r\nQUIT\r\n",
    b"a\r\r\n.\r\n",
    b"a\n.\r\n",
    b"a\r.\r\n",
    b"\r\n\r\n.\r\n\r\n.",
    b"x\r\n.",
    b"no final line end",
]


def reference_stuff(message: bytes) -> bytes:
    """
    The obvious line-by-line dot-stuffing, to compare against: double the
    leading dot of each CRLF-separated line, then the terminator.
    """
    lines = [b"." + line if line.startswith(b".") else line for line in message.split(b"\r\n")]
    wire = b"\r\n".join(lines)
    if message == b"" or message.endswith(b"\r\n"):
        return wire + b".\r\n"
    return wire + b"\r\n.\r\n"


def unstuff(wire: bytes) -> bytes:
    """
    What a receiver recovers: lines up to the first lone dot, one leading
    dot removed from each.
    """
    lines = []
    for line in wire.split(b"\r\n"):
        if line == b".":
            break
        lines.append(line[1:] if line.startswith(b".") else line)
    return b"".join(line + b"\r\n" for line in lines)


def stuff_in_chunks(chunks) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.feed(chunk) for chunk in chunks) + stuffer.finish()


def splits(message: bytes, cuts) -> list[bytes]:
    edges = [0, *cuts, len(message)]
    return [message[a:b] for a, b in itertools.pairwise(edges)]


class DotStufferTests(SynchronousTestCase):
    """
    L{DotStuffer} stuffs the same whatever the chunk boundaries.
    """

    def test_whole_messages(self) -> None:
        """
        Fed in one chunk, each tricky message is stuffed as the reference
        does it; exact bytes for a few.
        """
        for message in TRICKY:
            self.assertEqual(stuff_in_chunks([message]), reference_stuff(message), message)
        self.assertEqual(stuff_in_chunks([b"."]), b"..\r\n.\r\n")
        self.assertEqual(stuff_in_chunks([b""]), b".\r\n")
        self.assertEqual(stuff_in_chunks([b"a\r\n.\r\nb\r\n"]), b"a\r\n..\r\nb\r\n.\r\n")
        self.assertEqual(stuff_in_chunks([b"a\n.b"]), b"a\n.b\r\n.\r\n")

    def test_every_single_split(self) -> None:
        """
        Each tricky message, split in two at every offset, gives the same
        bytes as the reference.
        """
        for message in TRICKY:
            for cut in range(len(message) + 1):
                chunks = splits(message, [cut])
                self.assertEqual(stuff_in_chunks(chunks), reference_stuff(message), chunks)

    def test_every_pair_of_splits_with_empty_chunks(self) -> None:
        """
        Split in three at every pair of offsets (equal offsets make empty
        chunks), with empty chunks fed in between as well.
        """
        for message in TRICKY:
            for a, b in itertools.combinations_with_replacement(range(len(message) + 1), 2):
                chunks = splits(message, [a, b])
                padded = [c for chunk in chunks for c in (b"", chunk)] + [b""]
                self.assertEqual(stuff_in_chunks(padded), reference_stuff(message), chunks)

    def test_byte_by_byte(self) -> None:
        """
        One byte at a time: the state lives entirely in the stuffer.
        """
        for message in TRICKY:
            chunks = [message[i : i + 1] for i in range(len(message))]
            self.assertEqual(stuff_in_chunks(chunks), reference_stuff(message), message)

    def test_cr_then_lf_dot_in_next_chunk(self) -> None:
        """
        A CR ending one chunk and C{LF .} opening the next form a line
        start: the dot is doubled.
        """
        stuffer = DotStuffer()
        self.assertEqual(stuffer.feed(b"a\r"), b"a\r")
        self.assertEqual(stuffer.feed(b"\n.\r\n"), b"\n..\r\n")
        self.assertEqual(stuffer.finish(), b".\r\n")

    def test_dot_line_on_16k_boundary(self) -> None:
        """
        The twisted.mail bug: a lone-dot line starting exactly on a 16 KiB
        chunk boundary, or as the first line, must not end the data early.
        """
        chunk = 16 * 1024
        head = b"x" * (chunk - 5) + b"\r\n"
        message = b".\r\n" + head + b".\r\nMAIL FROM:<evil@example.test>\r\n"
        self.assertEqual(message[chunk : chunk + 3], b".\r\n")
        chunks = [message[i : i + chunk] for i in range(0, len(message), chunk)]
        wire = stuff_in_chunks(chunks)
        self.assertEqual(wire.find(b"\r\n.\r\n"), len(wire) - 5)
        self.assertTrue(wire.startswith(b"..\r\n"))
        self.assertEqual(unstuff(wire), message)

    @given(st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b".."]), max_size=30), st.data())
    def test_any_split_round_trips(self, parts, data) -> None:
        """
        Any message over a small alphabet, split anywhere, is stuffed as the
        reference does; for CRLF-only messages the receiver gets it back.
        """
        message = b"".join(parts)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=6)))
        wire = stuff_in_chunks(splits(message, cuts))
        self.assertEqual(wire, reference_stuff(message))
        if b"\r" not in message.replace(b"\r\n", b"") and b"\n" not in message.replace(b"\r\n", b""):
            expected = message if message.endswith(b"\r\n") or not message else message + b"\r\n"
            self.assertEqual(unstuff(wire), expected)


# -- POP3: the file-to-wire transforms -----------------------------------------

SAMPLES = [
    b"",
    b".",
    b"\r",
    b"\n",
    b"\r\n",
    b".\r\n",
    b"..\r\n",
    b"Subject: a\r\n\r\nbody\r\n",
    b"Subject: a\r\n\r\n.\r\n.line\r\n..two\r\nend",
    b"Subject: a\n\n.\n.line\nmixed\r\nend\n",
    b"A: 1\r\nB: 2\r\n\r\nl1\r\n\r\nl3\r\n.l4\r\nl5\r\n",
    b"bare\rcr\r\r\n.\rx\n\r",
    b"no header end\r\n.at start\r\n",
    b"\r\n\r\n.\r\n\r\n",
    b"x\r\n\r\n\r\n\r\n",
    b".\n.\n.",
    b"a\r\r\nb\n\r\nc",
]


def reference_normalise(data: bytes) -> bytes:
    out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if out and not out.endswith(b"\n"):
        out += b"\r\n"
    return out


def reference_lines(data: bytes) -> list[bytes]:
    text = reference_normalise(data)
    return [line + b"\r\n" for line in text.split(b"\r\n")[:-1]] if text else []


def reference_wire(data: bytes, body_lines: int | None = None) -> bytes:
    lines = reference_lines(data)
    if body_lines is not None:
        kept = []
        in_header = True
        remaining = body_lines
        for line in lines:
            if not in_header:
                if remaining == 0:
                    break
                remaining -= 1
            kept.append(line)
            if in_header and line == b"\r\n":
                in_header = False
        lines = kept
    return b"".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


def run_split(transform: MessageTransform, data: bytes, cuts: list[int]) -> bytes:
    out = []
    start = 0
    for cut in [*cuts, len(data)]:
        out.append(transform.feed(data[start:cut]))
        start = cut
    out.append(transform.finish())
    return b"".join(out)


class LineEndNormaliserTests(SynchronousTestCase):
    def test_every_split(self):
        """
        Bare LF becomes CRLF, CRLF stays, a CR alone passes, a final CRLF
        is added when missing, whatever the chunking (every single split
        and every pair of splits).
        """
        for data in SAMPLES:
            expected = reference_normalise(data)
            for i in range(len(data) + 1):
                for j in range(i, len(data) + 1):
                    n = LineEndNormaliser()
                    out = n.feed(data[:i]) + n.feed(data[i:j]) + n.feed(data[j:]) + n.finish()
                    self.assertEqual(out, expected, (data, i, j))
                    self.assertEqual(n.output_size, len(expected))

    def test_cr_then_lf_across_chunks(self):
        """
        A CR at the end of one chunk and the LF at the start of the next
        make one CRLF, not CR CR LF.
        """
        n = LineEndNormaliser()
        self.assertEqual(n.feed(b"a\r") + n.feed(b"\nb\n"), b"a\r\nb\r\n")

    def test_unchanged_chunk_not_copied(self):
        """
        A chunk with CRLF line ends only (all of our own deliveries) is
        returned as the very same object, and so is a chunk without a
        line start to stuff: no copy on the hot path.
        """
        chunk = b"Subject: x\r\n\r\n" + b"line of text\r\n" * 300
        n = LineEndNormaliser()
        self.assertIs(n.feed(chunk), chunk)
        s = DotStuffer()
        self.assertIs(s.feed(chunk), chunk)
        self.assertIs(MessageTransform().feed(chunk), chunk)

    def test_bare_lf_only_and_mixed(self):
        """
        Exact output for a chunk of bare LF line ends only, a mixed one,
        and an LF completing a CR that ended the previous chunk.
        """
        n = LineEndNormaliser()
        self.assertEqual(n.feed(b"a\nb\n"), b"a\r\nb\r\n")
        self.assertEqual(n.feed(b"c\r\nd\ne\r"), b"c\r\nd\r\ne\r")
        self.assertEqual(n.feed(b"\nf\n"), b"\nf\r\n")
        self.assertEqual(n.output_size, 18)

    def test_empty(self):
        """
        An empty file stays empty: no CRLF is added.
        """
        n = LineEndNormaliser()
        self.assertEqual(n.feed(b"") + n.finish(), b"")


class DotStufferLineStartTests(SynchronousTestCase):
    """
    L{DotStuffer} on CRLF text without a terminator: the checks the POP3
    stuffer had.
    """

    def test_every_split(self):
        """
        A "." at the start of any line gets another, at the start of the
        stream and at every chunk boundary.
        """
        data = b".a\r\n..b\r\nc.\r\n.\r\n\r\n.d"
        expected = b"..a\r\n...b\r\nc.\r\n..\r\n\r\n..d"
        for i in range(len(data) + 1):
            for j in range(i, len(data) + 1):
                s = DotStuffer()
                self.assertEqual(s.feed(data[:i]) + s.feed(data[i:j]) + s.feed(data[j:]), expected, (i, j))

    def test_single_bytes(self):
        """
        Fed one byte at a time, the result is the same.
        """
        data = b"\r\n.\r\n.."
        s = DotStuffer()
        self.assertEqual(b"".join(s.feed(data[i : i + 1]) for i in range(len(data))), b"\r\n..\r\n...")


class HeaderAndBodyLinesTests(SynchronousTestCase):
    def test_zero_lines(self):
        """
        TOP n 0: the header and the blank line only.
        """
        f = HeaderAndBodyLines(0)
        self.assertEqual(f.feed(b"A: 1\r\n\r\nbody\r\n"), b"A: 1\r\n\r\n")
        self.assertTrue(f.complete)

    def test_split_blank_line(self):
        """
        A blank line split between its CR and LF still ends the header.
        """
        f = HeaderAndBodyLines(1)
        out = f.feed(b"A: 1\r\n\r") + f.feed(b"\nl1\r\nl2\r\n")
        self.assertEqual(out, b"A: 1\r\n\r\nl1\r\n")
        self.assertTrue(f.complete)

    def test_not_complete_until_enough(self):
        """
        The filter is not complete while it still wants lines.
        """
        f = HeaderAndBodyLines(2)
        f.feed(b"A: 1\r\n\r\nl1\r\n")
        self.assertFalse(f.complete)
        self.assertEqual(f.feed(b"l2\r\nl3\r\n"), b"l2\r\n")
        self.assertTrue(f.complete)
        self.assertEqual(f.feed(b"more\r\n"), b"")


class MessageTransformTests(SynchronousTestCase):
    def test_retr_every_split(self):
        """
        The RETR transform matches the reference for every sample split at
        every offset and every pair of offsets.
        """
        for data in SAMPLES:
            expected = reference_wire(data)
            for i in range(len(data) + 1):
                for j in range(i, len(data) + 1):
                    self.assertEqual(run_split(MessageTransform(), data, [i, j]), expected, (data, i, j))

    def test_top_every_split(self):
        """
        The TOP transform matches the reference for 0 to 4 body lines, for
        every sample split at every offset.
        """
        for data in SAMPLES:
            for body_lines in range(5):
                expected = reference_wire(data, body_lines)
                for i in range(len(data) + 1):
                    got = run_split(MessageTransform(body_lines), data, [i])
                    self.assertEqual(got, expected, (data, body_lines, i))

    @settings(max_examples=300, deadline=None)
    @given(
        st.binary(max_size=60).map(lambda b: bytes(b"a.\r\n"[x % 4] for x in b)),
        st.lists(st.integers(min_value=0, max_value=60), max_size=6),
        st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
    )
    def test_random_split(self, data, cuts, body_lines):
        """
        Random texts of ".", CR, LF and a letter, cut at random offsets,
        give the reference output (RETR and TOP).
        """
        cuts = sorted(min(c, len(data)) for c in cuts)
        self.assertEqual(run_split(MessageTransform(body_lines), data, cuts), reference_wire(data, body_lines))

    def test_terminator_line_on_chunk_boundary(self):
        """
        A line holding only "." at a 16 KiB boundary (the twisted.mail bug)
        is stuffed, so it cannot end the response early.
        """
        data = b"x" * 16382 + b"\r\n" + b".\r\n" + b"after\r\n"
        t = MessageTransform()
        out = t.feed(data[:16384]) + t.feed(data[16384:]) + t.finish()
        self.assertEqual(out, b"x" * 16382 + b"\r\n..\r\nafter\r\n.\r\n")

    def test_exact_example(self):
        """
        An LF file: CRLF line ends, stuffed dots, the terminator.
        """
        t = MessageTransform()
        self.assertEqual(t.feed(b"S: x\n\n.hi\n") + t.finish(), b"S: x\r\n\r\n..hi\r\n.\r\n")

    def test_complete_only_for_top(self):
        """
        RETR is never complete early; TOP is once it has its lines.
        """
        retr = MessageTransform()
        retr.feed(b"A: 1\r\n\r\n")
        self.assertFalse(retr.complete)
        top = MessageTransform(0)
        top.feed(b"A: 1\r\n\r\n")
        self.assertTrue(top.complete)


class WireSizeTests(SynchronousTestCase):
    def test_sizes(self):
        """
        The size is that of the normalised message, the stuffing and the
        terminator not counted, whatever the chunking.
        """
        for data in SAMPLES:
            expected = len(reference_normalise(data))
            self.assertEqual(wire_size([data]), expected)
            self.assertEqual(wire_size([data[i : i + 1] for i in range(len(data))]), expected)

    def test_examples(self):
        """
        Exact figures: LF counts as two, a missing final line end adds two.
        """
        self.assertEqual(wire_size([b"a\nb\n"]), 6)
        self.assertEqual(wire_size([b"a\r\nb"]), 6)
        self.assertEqual(wire_size([b""]), 0)
