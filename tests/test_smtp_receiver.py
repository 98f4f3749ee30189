"""
Tests for L{mailappliance.smtp.receiver}.
"""

from __future__ import annotations

import errno

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.queue.envelope import (
    CONTENT_7BIT,
    CONTENT_8BIT,
    CONTENT_8BIT_HEADERS,
)
from mailappliance.smtp import replies
from mailappliance.smtp.chunking import ChunkBodyReader
from mailappliance.smtp.headers import HeaderCompleter
from mailappliance.smtp.receiver import MessageReceiver, commit_failure_reply
from mailappliance.testing import FakeWriter


class MessageReceiverTests(SynchronousTestCase):
    def test_stream(self) -> None:
        """
        The header and the decoded body are written; the rest after the
        end is returned.
        """
        writer = FakeWriter("Q")
        receiver = MessageReceiver(writer, 100)
        receiver.write_header(b"H: 1\r\n")
        self.assertEqual(receiver.feed(b"a\r\n..b\r\n"), (None, None))
        self.assertEqual(receiver.feed(b".\r\nQUIT\r\n"), (b"QUIT\r\n", None))
        self.assertEqual(bytes(writer.data), b"H: 1\r\na\r\n.b\r\n")
        self.assertIsNone(receiver.refusal())
        self.assertEqual(receiver.body_size, 7)

    def test_size_limit(self) -> None:
        """
        Once the body passes the limit nothing more is written, the data
        is still read to its end, and the refusal is 552 5.3.4.
        """
        writer = FakeWriter("Q")
        receiver = MessageReceiver(writer, 10)
        receiver.feed(b"12345678\r\n")
        self.assertEqual(receiver.feed(b"x\r\n" * 100), (None, None))
        self.assertEqual(bytes(writer.data), b"12345678")
        self.assertEqual(receiver.feed(b"\r\n.\r\n"), (b"", None))
        self.assertIs(receiver.refusal(), replies.MESSAGE_TOO_BIG)
        # Counted up to the chunk that went over the limit.
        self.assertEqual(receiver.body_size, 8 + 300)

    def test_exactly_at_limit(self) -> None:
        """
        A body of exactly the limit is accepted.
        """
        receiver = MessageReceiver(FakeWriter("Q"), 5)
        receiver.feed(b"abc\r\n.\r\n")
        self.assertIsNone(receiver.refusal())

    def test_bare_line_end(self) -> None:
        """
        A bare LF stops the writing and refuses with 550 5.6.0.
        """
        writer = FakeWriter("Q")
        receiver = MessageReceiver(writer, 100)
        receiver.feed(b"ok\r\n")
        receiver.feed(b"bad\nline\r\nmore\r\n")
        self.assertEqual(receiver.feed(b".\r\n"), (b"", None))
        self.assertEqual(bytes(writer.data), b"ok")
        self.assertIs(receiver.refusal(), replies.BARE_LINE_END_IN_DATA)

    def test_backpressure(self) -> None:
        """
        The writer's L{Deferred} is handed back to wait for.
        """
        writer = FakeWriter("Q")
        writer.writes_wait = True
        receiver = MessageReceiver(writer, 100)
        _, wait = receiver.feed(b"abc\r\n")
        self.assertIs(wait, writer.waits[0])

    def test_abort_once(self) -> None:
        """
        Abort reaches the writer once, and not after commit.
        """
        writer = FakeWriter("Q")
        receiver = MessageReceiver(writer, 100)
        receiver.abort()
        receiver.abort()
        self.assertEqual(writer.aborts, 1)
        writer = FakeWriter("Q")
        receiver = MessageReceiver(writer, 100)
        receiver.commit(object())
        receiver.abort()
        self.assertEqual((writer.aborts, writer.state), (0, "committed"))

    def test_header_completer(self) -> None:
        """
        With a completer, the body passes through it and what it still
        holds at the end of the data is written before the commit; the
        size limit counts the body as received.
        """
        writer = FakeWriter("Q")
        receiver = MessageReceiver(writer, 12, HeaderCompleter([(b"date", b"Date: D\r\n")]))
        receiver.write_header(b"H: 1\r\n")
        self.assertEqual(receiver.feed(b"Subj"), (None, None))
        self.assertEqual(bytes(writer.data), b"H: 1\r\n")
        self.assertEqual(receiver.feed(b"ect: s\r\n.\r\n"), (b"", None))
        self.assertEqual(bytes(writer.data), b"H: 1\r\nSubject: s\r\nDate: D\r\n")
        self.assertIsNone(receiver.refusal())

    def test_header_completer_refused(self) -> None:
        """
        A refused message gets nothing more from the completer.
        """
        writer = FakeWriter("Q")
        receiver = MessageReceiver(writer, 5, HeaderCompleter([(b"date", b"Date: D\r\n")]))
        receiver.feed(b"Subject: long\r\n.\r\n")
        self.assertIs(receiver.refusal(), replies.MESSAGE_TOO_BIG)
        self.assertEqual(bytes(writer.data), b"")

    def test_chunk_reader(self) -> None:
        """
        With a L{ChunkBodyReader} (BDAT), octets are written as they are
        and the data never ends in C{feed}; L{MessageReceiver.end} ends
        it: the completer's remainder is written, a trailing CR refused.
        """
        writer = FakeWriter("Q")
        receiver = MessageReceiver(writer, 100, HeaderCompleter([(b"date", b"Date: D\r\n")]), ChunkBodyReader())
        self.assertEqual(receiver.feed(b"S: s\r\n.\r\n"), (None, None))
        self.assertEqual(receiver.feed(b"..x"), (None, None))
        receiver.end()
        self.assertEqual(bytes(writer.data), b"S: s\r\nDate: D\r\n\r\n.\r\n..x")
        self.assertIsNone(receiver.refusal())
        self.assertEqual(receiver.body_size, 12)

        writer = FakeWriter("Q")
        receiver = MessageReceiver(writer, 100, HeaderCompleter([(b"date", b"Date: D\r\n")]), ChunkBodyReader())
        receiver.feed(b"S: s\r")
        receiver.end()
        self.assertIs(receiver.refusal(), replies.BARE_LINE_END_IN_DATA)
        # Nothing from the completer after the refusal.
        self.assertEqual(bytes(writer.data), b"S: s\r")

    def test_content(self) -> None:
        """
        What was written is classified as it goes: our header, the body
        (dot-unstuffed, completed) as stored; 8-bit octets after the
        empty line are body, before it header section.
        """
        for header, data, content in (
            (b"H: 1\r\n", b"Subject: s\r\n\r\nplain\r\n.\r\n", CONTENT_7BIT),
            (b"H: 1\r\n", b"Subject: s\r\n\r\n\xc3\xa9\r\n.\r\n", CONTENT_8BIT),
            (b"H: 1\r\n", b"Subject: \xc3\xa9\r\n\r\nplain\r\n.\r\n", CONTENT_8BIT_HEADERS),
            ("H: jöran\r\n".encode(), b"\r\nplain\r\n.\r\n", CONTENT_8BIT_HEADERS),
        ):
            receiver = MessageReceiver(FakeWriter("Q"), 100, HeaderCompleter([(b"date", b"Date: D\r\n")]))
            receiver.write_header(header)
            for octet in range(len(data)):
                receiver.feed(data[octet:octet + 1])
            self.assertEqual(receiver.content, content, data)
        # Without a completer too; no header section (the completer's
        # empty line is written first).
        receiver = MessageReceiver(FakeWriter("Q"), 100)
        receiver.write_header(b"H: 1\r\n")
        receiver.feed(b"\r\n\xc3\xa9\r\n.\r\n")
        self.assertEqual(receiver.content, CONTENT_8BIT)
        receiver = MessageReceiver(FakeWriter("Q"), 100, HeaderCompleter([]))
        receiver.write_header(b"H: 1\r\n")
        receiver.feed(b"\xc3\xa9 no header section\r\n.\r\n")
        self.assertEqual(receiver.content, CONTENT_8BIT)

    def test_commit_failure_reply(self) -> None:
        """
        A full disk or quota is 452 4.3.1; anything else 451 4.3.0.
        """
        self.assertIs(commit_failure_reply(Failure(OSError(errno.ENOSPC, "full"))), replies.QUEUE_FULL)
        self.assertIs(commit_failure_reply(Failure(OSError(errno.EDQUOT, "quota"))), replies.QUEUE_FULL)
        self.assertIs(commit_failure_reply(Failure(OSError(errno.EIO, "io"))), replies.QUEUE_FAILED)
        self.assertIs(commit_failure_reply(Failure(ValueError())), replies.QUEUE_FAILED)
