# -*- test-case-name: tests.test_dotstuff -*-
"""
Tests for L{mailappliance.dotstuff}.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.dotstuff import DotStuffer

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
