"""
Tests for L{mailappliance.smtp.chunking}: the BDAT command (RFC 3030) of
the SMTP server, driven over L{SMTPHarness}, and its body reader.
"""

from __future__ import annotations

import base64
import errno

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import Mailbox
from mailappliance.queue.envelope import Envelope, Recipient
from mailappliance.smtp.chunking import ChunkBodyReader
from mailappliance.smtp.policy import SMTPSettings
from mailappliance.smtp.server import MAX_ERRORS
from mailappliance.testing import FakeChecker, SMTPHarness, TLSCapableTransport
from tests.test_smtp_server import BYE, EHLO, HOST, NEED_MAIL, NEED_RCPT, OK, RCPT_OK, SENDER_OK, UNKNOWN_USER, lines

ALICE = Mailbox("alice", "example.test")
SENDER = Mailbox("sender", "elsewhere.test")
QUEUED = "250 2.0.0 Ok: queued as Q1"
NO_VALID = "503 5.5.1 Error: no valid recipients"
SYNTAX = "501 5.5.4 Syntax: BDAT chunk-size [LAST]"
UNREADABLE = f"421 4.5.0 {HOST} Error: BDAT chunk size unreadable, closing connection"
TOO_BIG = "552 5.3.4 Error: message size exceeds fixed limit"
BARE = "550 5.6.0 Error: message contains bare CR or LF (line ends must be CRLF); not accepted"
DATA_AFTER_BDAT = "503 5.5.1 Error: DATA after BDAT"
RCPT_AFTER_BDAT = "503 5.5.1 Error: RCPT after BDAT"
OPEN = b"EHLO client.test\r\nMAIL FROM:<sender@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\n"

# Commands hidden in chunk data: they must be stored, never run.
FIRST = b"Subject: chunked\r\n\r\nRSET\r\n.\r\nQUIT\r\n..dot\r\n"
SECOND = b"\xc3\xa9t\xc3\xa9 8-bit\r\n.\r\n"
PIPELINED = (
    b"EHLO client.test\r\n"
    b"MAIL FROM:<sender@elsewhere.test> BODY=8BITMIME\r\n"
    b"RCPT TO:<alice@example.test>\r\n"
    b"RCPT TO:<nobody@example.test>\r\n"
    b"BDAT %d\r\n" % len(FIRST) + FIRST
    + b"NOOP\r\n"
    + b"BDAT %d LAST\r\n" % len(SECOND) + SECOND
    + b"QUIT\r\n"
)
PIPELINED_REPLIES = lines(
    *EHLO, SENDER_OK, RCPT_OK, UNKNOWN_USER, f"250 2.0.0 Ok: {len(FIRST)} octets received", OK, QUEUED, BYE
)


def received(session: SMTPHarness, index: int = 0) -> bytes:
    """
    The body a writer of C{session} was given, after our C{Received:}
    header (whose last line ends with the time zone).
    """
    return bytes(session.spool.writers[index].data).split(b" +0000\r\n", 1)[1]


def opened(**harness: object) -> SMTPHarness:
    """
    A session with a transaction open for alice.
    """
    session = SMTPHarness(**harness)  # type: ignore[arg-type]
    session.send(OPEN)
    return session


def bdat(size: int, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"")


class ChunkBodyReaderTests(SynchronousTestCase):
    def feed_all(self, *pieces: bytes) -> ChunkBodyReader:
        reader = ChunkBodyReader()
        for piece in pieces:
            self.assertEqual(reader.feed(piece), (piece, None))
        reader.finish()
        return reader

    def test_clean(self) -> None:
        """
        CRLF line ends, split anywhere (a CR and its LF in different
        pieces included), are not bare; octets pass through as they are.
        """
        text = b"a\r\nb\r\n\r\n.\r\n"
        for offset in range(len(text) + 1):
            self.assertFalse(self.feed_all(text[:offset], text[offset:]).bare_line_end, offset)
        self.assertFalse(self.feed_all(b"no line end").bare_line_end)
        self.assertFalse(self.feed_all().bare_line_end)

    def test_bare(self) -> None:
        """
        A bare LF, a bare CR, an LF opening a piece after a piece that did
        not end with CR, a CR ending a piece before one that does not open
        with LF, and a CR at the very end are bare.
        """
        for pieces in (
            (b"a\nb",),
            (b"a\rb",),
            (b"a\r\n", b"\nb"),
            (b"a\r", b"b\r\n"),
            (b"a\r", b"\r\n"),
            (b"a\r\n\r",),
            (b"a\r", b"\n", b"\r"),
            (b"\n",),
        ):
            self.assertTrue(self.feed_all(*pieces).bare_line_end, pieces)

    def test_discarding(self) -> None:
        """
        While discarding, no octets are passed on; the data never ends
        in C{feed}.
        """
        reader = ChunkBodyReader()
        reader.discarding = True
        self.assertEqual(reader.feed(b"abc\r\n"), (b"", None))

    @settings(max_examples=300, deadline=None)
    @given(text=st.binary(max_size=40).map(lambda b: bytes(b"a\r\n"[x % 3] for x in b)),
           cuts=st.lists(st.integers(0, 40), max_size=6))
    def test_any_split(self, text: bytes, cuts: list[int]) -> None:
        """
        Whatever the split, bare CR or LF is found exactly when the whole
        text has a CR or LF outside a CRLF pair.
        """
        points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
        crlf = text.count(b"\r\n")
        expected = text.count(b"\r") != crlf or text.count(b"\n") != crlf
        reader = self.feed_all(*[text[a:b] for a, b in zip(points, points[1:])])
        self.assertEqual(reader.bare_line_end, expected, text)


class ChunkedMessageTests(SynchronousTestCase):
    def test_ehlo_both_services(self) -> None:
        """
        EHLO offers CHUNKING on the MTA and the submission service.
        """
        self.assertTrue(SMTPHarness().send(b"EHLO c\r\n").endswith(b"250-SMTPUTF8\r\n250 CHUNKING\r\n"))
        submission = SMTPHarness(settings=SMTPSettings(hostname=HOST, service="submission"), peer="127.0.0.1",
                                 checker=FakeChecker())
        self.assertTrue(submission.send(b"EHLO c\r\n").endswith(b"\r\n250-CHUNKING\r\n250 AUTH PLAIN LOGIN\r\n"))

    def test_two_chunks(self) -> None:
        """
        The octets after each BDAT line are message data as they are: no
        dot-unstuffing, no end marker, commands in them never run. A chunk
        that is not the last gets 250 with its size; the last is
        committed with its envelope and answered with the queue id.
        """
        session = SMTPHarness(connect=False)
        session.clock.advance(1700000000)
        session.connect()
        self.assertEqual(session.send(OPEN), lines(*EHLO, SENDER_OK, RCPT_OK))
        self.assertEqual(session.send(bdat(len(FIRST)) + FIRST), lines(f"250 2.0.0 Ok: {len(FIRST)} octets received"))
        writer = session.spool.writers[0]
        self.assertEqual(writer.state, "open")
        self.assertEqual(session.send(bdat(len(SECOND), last=True) + SECOND), lines(QUEUED))
        self.assertEqual(
            bytes(writer.data),
            b"Received: from client.test ([192.0.2.1])\r\n"
            b"\tby mx.example.test (mailappliance) with ESMTP id Q1\r\n"
            b"\tfor <alice@example.test>; Tue, 14 Nov 2023 22:13:20 +0000\r\n" + FIRST + SECOND,
        )
        self.assertEqual(
            writer.envelope,
            Envelope(
                queue_id="Q1",
                sender=SENDER,
                recipients=(Recipient(ALICE, ALICE, local=True),),
                arrival=1700000000.0,
                size=len(writer.data),
                body="7BIT",
                smtputf8=False,
                client="helo=client.test addr=192.0.2.1",
                # Not declared, but the second chunk holds 8-bit octets.
                content="8bit",
            ),
        )
        self.assertEqual(writer.state, "committed")
        self.assertEqual(session.resolver.asked, ["alice@example.test"])
        # The session goes on.
        self.assertEqual(session.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nBDAT 3 LAST\r\nx\r\n"),
                         lines(SENDER_OK, RCPT_OK, "250 2.0.0 Ok: queued as Q2"))
        # No header section: an empty line keeps "x" out of ours.
        self.assertEqual(received(session, 1), b"\r\nx\r\n")

    def test_last_of_zero(self) -> None:
        """
        C{BDAT 0 LAST} ends the message, also as its only chunk (an empty
        message); C{LAST} may be in any case; a non-last empty chunk is
        fine.
        """
        session = opened()
        self.assertEqual(session.send(b"BDAT 0\r\nBDAT 6\r\nhello\n"), lines("250 2.0.0 Ok: 0 octets received",
                                                                           "250 2.0.0 Ok: 6 octets received"))
        self.assertEqual(session.send(b"bdat 0 last\r\n"), lines(BARE))
        session.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.send(b"BDAT 5\r\nhello"), lines("250 2.0.0 Ok: 5 octets received"))
        self.assertEqual(session.send(b"BDAT 0 LAST\r\n"), lines("250 2.0.0 Ok: queued as Q2"))
        self.assertEqual(received(session, 1), b"\r\nhello")
        session.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.send(b"BDAT 0 LAST\r\n"), lines("250 2.0.0 Ok: queued as Q3"))
        self.assertEqual(received(session, 2), b"")

    def test_parameters_of_mail(self) -> None:
        """
        BODY=8BITMIME and SMTPUTF8 of MAIL apply to a chunked message as
        to DATA: recorded in the envelope, C{with UTF8SMTP}.
        """
        session = SMTPHarness()
        session.resolver.accounts.add("ü@example.test")
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test> BODY=8BITMIME SMTPUTF8\r\n"
                     + "RCPT TO:<ü@example.test>\r\n".encode())
        self.assertEqual(session.send(b"BDAT 8 LAST\r\n\xc3\xbc 8\r\n\r\n"), lines(QUEUED))
        writer = session.spool.writers[0]
        self.assertIn(b" with UTF8SMTP id Q1", bytes(writer.data))
        self.assertEqual((writer.envelope.body, writer.envelope.smtputf8), ("8BITMIME", True))

    def test_inside_data_is_body(self) -> None:
        """
        Once DATA began, a BDAT line is body text.
        """
        session = opened()
        self.assertEqual(session.send(b"DATA\r\nBDAT 3 LAST\r\nabc\r\n.\r\n"),
                         lines("354 2.0.0 End data with <CR><LF>.<CR><LF>", QUEUED))
        self.assertEqual(received(session), b"\r\nBDAT 3 LAST\r\nabc\r\n")

    def test_log(self) -> None:
        """
        A chunked message is logged as queued like any other; refusals of
        BDAT name the command, and the queue id once there is one.
        """
        session = opened(settings=SMTPSettings(hostname=HOST, max_message_size=10))
        session.send(b"BDAT 3 LAST\r\nab\n")
        session.send(b"MAIL FROM:<sender@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT 4 LAST\r\nab\r\n")
        self.assertEqual(
            session.log_lines()[1:],
            [
                'service=smtp qid=Q1 event=reject peer=192.0.2.1 session=s1 cmd=BDAT from=<sender@elsewhere.test> '
                f'code=550 status=5.6.0 reason="{BARE[10:]}"',
                "service=smtp qid=Q2 event=queued from=<sender@elsewhere.test> size=%d nrcpt=1 peer=192.0.2.1 session=s1"
                % len(session.spool.writers[1].data),
            ],
        )


class PipeliningTests(SynchronousTestCase):
    def test_one_write(self) -> None:
        """
        A whole chunked transaction and QUIT in one write: replies in
        order, the message as sent.
        """
        session = SMTPHarness()
        self.assertEqual(session.send(PIPELINED), PIPELINED_REPLIES)
        self.assertEqual(received(session), FIRST + SECOND)
        self.assertEqual(session.spool.writers[0].envelope.body, "8BITMIME")
        self.assertTrue(session.closed)

    def test_every_split_offset(self) -> None:
        """
        The same stream split in two at every offset gives the same
        replies and the same stored message.
        """
        for offset in range(len(PIPELINED) + 1):
            session = SMTPHarness()
            self.assertEqual(session.send(PIPELINED[:offset], PIPELINED[offset:]), PIPELINED_REPLIES, offset)
            self.assertEqual(received(session), FIRST + SECOND, offset)

    def test_byte_at_a_time(self) -> None:
        """
        One byte per read works too.
        """
        session = SMTPHarness()
        self.assertEqual(session.send(*[bytes([b]) for b in PIPELINED]), PIPELINED_REPLIES)
        self.assertEqual(received(session), FIRST + SECOND)

    @settings(max_examples=200, deadline=None)
    @given(cuts=st.lists(st.integers(0, len(PIPELINED)), max_size=12), slow=st.booleans())
    def test_arbitrary_splits(self, cuts: list[int], slow: bool) -> None:
        """
        Split at any points, with lookups answered at once or later, the
        replies and the stored message are those of one write.
        """
        points = sorted(set(cuts) | {0, len(PIPELINED)})
        session = SMTPHarness()
        session.resolver.hold = slow
        output = b""
        for a, b in zip(points, points[1:]):
            output += session.send(PIPELINED[a:b])
            while session.resolver.pending:
                session.resolver.answer(0)
                output += session.output()
        self.assertEqual(output, PIPELINED_REPLIES)
        self.assertEqual(received(session), FIRST + SECOND)

    def test_large_chunk_in_pieces(self) -> None:
        """
        A chunk larger than any read is taken in the pieces the transport
        delivers, without waiting for all of it, and commands after it are
        read only once it is complete.
        """
        session = opened()
        body = b"0123456789abcde\r\n" * 4000
        session.send(bdat(len(body), last=True) + body[:30000])
        self.assertEqual(received(session), b"\r\n" + body[:30000])
        self.assertEqual(session.send(body[30000:-1]), b"")
        self.assertEqual(session.send(body[-1:] + b"NOOP\r\n"), lines(QUEUED, OK))
        self.assertEqual(received(session), b"\r\n" + body)


class SequenceTests(SynchronousTestCase):
    def test_before_mail_and_rcpt(self) -> None:
        """
        BDAT before MAIL, before any RCPT, or when every RCPT was refused
        is 503 5.5.1, after its octets are read and discarded: commands in
        them are never run, and nothing is queued.
        """
        hidden = b"NOOP\r\nQUIT\r\n"
        session = SMTPHarness()
        self.assertEqual(session.send(bdat(len(hidden), last=True) + hidden), lines(NEED_MAIL))
        session.send(b"EHLO c\r\n")
        self.assertEqual(session.send(bdat(len(hidden)) + hidden + b"MAIL FROM:<a@b.test>\r\n"),
                         lines(NEED_MAIL, SENDER_OK))
        self.assertEqual(session.send(bdat(len(hidden)) + hidden), lines(NEED_RCPT))
        self.assertEqual(session.send(b"MAIL FROM:<a@b.test>\r\n"), lines(SENDER_OK))
        self.assertEqual(
            session.send(b"RCPT TO:<nobody@example.test>\r\n" + bdat(len(hidden)) + hidden
                         + bdat(len(hidden), last=True) + hidden + b"NOOP\r\n"),
            lines(UNKNOWN_USER, NO_VALID, NO_VALID, OK),
        )
        self.assertEqual(session.spool.writers, [])
        self.assertFalse(session.closed)

    def test_submission_before_auth(self) -> None:
        """
        On submission without AUTH, MAIL is refused, so BDAT is 503 and
        its octets are discarded.
        """
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, service="submission"), peer="127.0.0.1",
                              checker=FakeChecker())
        session.send(b"EHLO c\r\n")
        self.assertEqual(
            session.send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT 6 LAST\r\nRSET\r\n"),
            lines("530 5.7.0 Authentication required", NEED_MAIL, NEED_MAIL),
        )
        self.assertEqual(session.spool.writers, [])

    def test_data_and_rcpt_after_bdat(self) -> None:
        """
        DATA after a BDAT of the same transaction is 503 (RFC 3030 section
        3), as is RCPT (the recipients are settled); the transaction
        stays, and RSET discards it.
        """
        session = opened()
        session.send(bdat(4) + b"ab\r\n")
        self.assertEqual(session.send(b"DATA\r\nRCPT TO:<bob@example.test>\r\nMAIL FROM:<a@b.test>\r\n"),
                         lines(DATA_AFTER_BDAT, RCPT_AFTER_BDAT, "503 5.5.1 Error: nested MAIL command"))
        self.assertEqual(session.spool.writers[0].state, "open")
        self.assertEqual(session.send(b"RSET\r\nBDAT 2 LAST\r\nab"), lines(OK, NEED_MAIL))
        self.assertEqual(session.spool.writers[0].state, "aborted")
        self.assertEqual(len(session.spool.writers), 1)

    def test_rset_and_ehlo_discard(self) -> None:
        """
        RSET or EHLO between chunks discards the message (the writer
        aborted, so the spool removes its file); BDAT then needs MAIL.
        """
        for command in (b"RSET\r\n", b"EHLO c\r\n", b"HELO c\r\n"):
            session = opened()
            session.send(bdat(4) + b"ab\r\n")
            reply = session.send(command + bdat(3, last=True) + b"x\r\n")
            self.assertTrue(reply.endswith(lines(NEED_MAIL)), reply)
            self.assertEqual([w.state for w in session.spool.writers], ["aborted"])
            self.assertEqual(session.spool.writers[0].aborts, 1)

    def test_quit_discards(self) -> None:
        """
        QUIT between chunks discards the message.
        """
        session = opened()
        self.assertEqual(session.send(bdat(4) + b"ab\r\nQUIT\r\n"), lines("250 2.0.0 Ok: 4 octets received", BYE))
        self.assertEqual(session.spool.writers[0].state, "aborted")

    def test_starttls_and_auth_in_transaction(self) -> None:
        """
        Between chunks STARTTLS and AUTH are refused like anywhere inside
        a transaction; the message goes on.
        """
        session = opened(tls=object(), transport_class=TLSCapableTransport)
        session.send(bdat(4) + b"ab\r\n")
        self.assertEqual(session.send(b"STARTTLS\r\nAUTH PLAIN\r\n"),
                         lines("503 5.5.1 Error: MAIL transaction in progress",
                               "503 5.5.1 Error: authentication not enabled"))
        self.assertEqual(session.send(bdat(0, last=True)), lines(QUEUED))
        self.assertEqual(received(session), b"\r\nab\r\n")

    def test_starttls_drops_pipelined_chunk(self) -> None:
        """
        A BDAT and its octets sent in plaintext behind STARTTLS are dropped
        unread (RFC 3207 section 4.2), as any command would be.
        """
        session = SMTPHarness(tls=object(), transport_class=TLSCapableTransport)
        session.send(b"EHLO c\r\n")
        self.assertEqual(
            session.send(b"STARTTLS\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT 2 LAST\r\nhi"),
            lines("220 2.0.0 Ready to start TLS"),
        )
        self.assertEqual(session.send(b"BDAT 2 LAST\r\nhi"), lines(NEED_MAIL))
        self.assertEqual(session.spool.writers, [])


class SyntaxTests(SynchronousTestCase):
    def test_readable_size(self) -> None:
        """
        A readable size with something other than LAST after it is 501
        5.5.4, after its octets are discarded; inside a transaction it
        fails the transaction like any refused chunk.
        """
        session = SMTPHarness()
        session.send(b"EHLO c\r\n")
        self.assertEqual(session.send(b"BDAT 6 LATER\r\nRSET\r\nNOOP\r\n"), lines(SYNTAX, OK))
        session.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.send(b"BDAT 4\r\nab\r\nBDAT 2 X\r\nxyBDAT 2 LAST\r\ncd"),
                         lines("250 2.0.0 Ok: 4 octets received", SYNTAX, SYNTAX))
        self.assertEqual(session.spool.writers[0].state, "aborted")
        self.assertEqual(session.send(b"BDAT 2 LAST\r\nab"), lines(NEED_MAIL))
        self.assertFalse(session.closed)

    def test_unreadable_size(self) -> None:
        """
        When the size cannot be read (no size, not digits, more than 20
        digits), where the octets end cannot be known: 501 5.5.4, then 421
        and the session is closed, its message discarded, nothing after
        it read.
        """
        for argument in (b"", b"x", b"-1", b"+5", b"1e3", b"10LAST", b"123456789012345678901", b" 5"):
            session = opened()
            session.send(bdat(2) + b"ab")
            self.assertEqual(session.send(b"BDAT " + argument + b"\r\nNOOP\r\n"), lines(SYNTAX, UNREADABLE), argument)
            self.assertTrue(session.closed)
            self.assertEqual(session.spool.writers[0].state, "aborted")
            self.assertEqual(session.send(b"NOOP\r\n"), b"")

    def test_twenty_digits(self) -> None:
        """
        A size of 20 digits is readable: refused for its size (552), its
        octets discarded as they come.
        """
        session = opened()
        self.assertEqual(session.send(b"BDAT 00000000000000000003 LAST\r\nabc"), lines(QUEUED))
        session.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.send(b"BDAT 99999999999999999999\r\n" + b"x" * 100000), b"")
        self.assertEqual(session.protocol._lines.buffered, 0)
        self.assertEqual(len(session.spool.writers), 1)


class SizeTests(SynchronousTestCase):
    def test_over_the_limit(self) -> None:
        """
        Chunks adding up to more than the limit: 552 5.3.4 for the chunk
        that goes over, none of it written; the message is discarded, the
        transaction reset, and the chunks pipelined after it read and
        refused alike, up to the last; then a new MAIL works.
        """
        session = opened(settings=SMTPSettings(hostname=HOST, max_message_size=100))
        self.assertEqual(session.send(bdat(60) + b"a" * 60), lines("250 2.0.0 Ok: 60 octets received"))
        written = len(session.spool.writers[0].data)
        self.assertEqual(
            session.send(bdat(41) + b"MAIL FROM:<x@y.test>\r\n" + b"b" * 19 + bdat(5) + b"QUIT\r\n"[:5]
                         + bdat(4, last=True) + b"RSET" + b"NOOP\r\n"),
            lines(TOO_BIG, TOO_BIG, TOO_BIG, OK),
        )
        writer = session.spool.writers[0]
        self.assertEqual((writer.state, len(writer.data)), ("aborted", written))
        self.assertEqual(session.send(bdat(1, last=True) + b"x"), lines(NEED_MAIL))
        self.assertEqual(
            session.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n" + bdat(100, last=True)
                         + b"c" * 100),
            lines(SENDER_OK, RCPT_OK, "250 2.0.0 Ok: queued as Q2"),
        )
        self.assertEqual(received(session, 1), b"\r\n" + b"c" * 100)

    def test_failed_transaction_ends_at_mail(self) -> None:
        """
        After a refused chunk the client may start again with MAIL (or
        RSET) without sending the rest: the new transaction's chunks are
        taken.
        """
        session = opened(settings=SMTPSettings(hostname=HOST, max_message_size=10))
        self.assertEqual(session.send(bdat(11) + b"x" * 11), lines(TOO_BIG))
        self.assertEqual(session.spool.writers, [])
        self.assertEqual(
            session.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n" + bdat(2, last=True) + b"ok"),
            lines(SENDER_OK, RCPT_OK, QUEUED),
        )
        session.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.send(bdat(11) + b"x" * 11 + b"RSET\r\n" + bdat(1) + b"y"),
                         lines(TOO_BIG, OK, NEED_MAIL))


class BareLineEndTests(SynchronousTestCase):
    def test_refused_at_last(self) -> None:
        """
        A bare LF or CR anywhere, across a chunk boundary included: each
        chunk still gets its 250 and is consumed, the last 550 5.6.0; the
        message is discarded; the session goes on.
        """
        for chunks in ((b"a\nb\r\n", b"c\r\n"), (b"a\r\n", b"b\r", b"c\r\n"), (b"a\r\n", b"\nb"), (b"ab\r",)):
            session = opened()
            stream = b"".join(bdat(len(c)) + c for c in chunks[:-1]) + bdat(len(chunks[-1]), last=True) + chunks[-1]
            replies = [f"250 2.0.0 Ok: {len(c)} octets received" for c in chunks[:-1]]
            self.assertEqual(session.send(stream + b"NOOP\r\n"), lines(*replies, BARE, OK), chunks)
            self.assertEqual(session.spool.writers[0].state, "aborted")

    def test_crlf_across_chunks(self) -> None:
        """
        A CR ending one chunk and its LF opening the next is a line end.
        """
        session = opened()
        self.assertEqual(session.send(bdat(2) + b"a\r" + bdat(4, last=True) + b"\nb\r\n"),
                         lines("250 2.0.0 Ok: 2 octets received", QUEUED))
        self.assertEqual(received(session), b"\r\na\r\nb\r\n")


class SubmissionTests(SynchronousTestCase):
    def test_header_completed(self) -> None:
        """
        On submission, a chunked message without Message-ID: and Date:
        gets them, whatever the chunk boundaries, after its header.
        """
        message = b"From: alice@example.test\r\nSubject: s\r\n\r\nbody\r\n"
        for offset in range(len(message) + 1):
            checker = FakeChecker({"alice@example.test": b"pw"})
            session = SMTPHarness(settings=SMTPSettings(hostname=HOST, service="submission"), peer="127.0.0.1",
                                  checker=checker, connect=False)
            session.clock.advance(1700000000)
            session.connect()
            login = base64.b64encode(b"\0alice@example.test\0pw")
            session.send(b"EHLO c\r\nAUTH PLAIN " + login + b"\r\n")
            session.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n")
            first, second = message[:offset], message[offset:]
            self.assertEqual(session.send(bdat(len(first)) + first + bdat(len(second), last=True) + second),
                             lines(f"250 2.0.0 Ok: {len(first)} octets received", QUEUED), offset)
            self.assertEqual(
                received(session),
                b"From: alice@example.test\r\nSubject: s\r\n"
                b"Message-ID: <Q1@mx.example.test>\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nbody\r\n",
                offset,
            )


class SpoolTests(SynchronousTestCase):
    def test_backpressure(self) -> None:
        """
        When the writer asks to wait, the transport is paused and nothing
        more is written until it fires; a chunk's 250 is sent only then.
        """
        session = opened()
        session.spool.configure = lambda writer: setattr(writer, "writes_wait", True)
        self.assertEqual(session.send(bdat(10) + b"first\r\n"), b"")
        writer = session.spool.writers[0]
        header = bytes(writer.data)
        # The Received: header's write asked to wait.
        self.assertEqual(session.transport.producerState, "paused")
        self.assertEqual(session.send(b"abc"), b"")
        self.assertEqual(bytes(writer.data), header)
        writer.waits[0].callback(None)
        self.assertEqual(bytes(writer.data), header + b"\r\nfirst\r\nabc")
        self.assertEqual(session.transport.producerState, "paused")
        self.assertEqual(session.output(), b"")
        writer.waits[1].callback(None)
        self.assertEqual(session.output(), lines("250 2.0.0 Ok: 10 octets received"))
        self.assertEqual(session.transport.producerState, "producing")
        self.assertEqual(session.send(bdat(0, last=True) + b"NOOP\r\n"), lines(QUEUED, OK))

    def test_commit_waits(self) -> None:
        """
        The last chunk's 250 is sent only once the commit fires; pipelined
        commands wait for it.
        """
        session = opened()
        session.spool.configure = lambda writer: setattr(writer, "commit_result", "hold")
        self.assertEqual(session.send(bdat(3, last=True) + b"x\r\nNOOP\r\nQUIT\r\n"), b"")
        session.spool.writers[0].commit_deferred.callback("Q1")
        self.assertEqual(session.output(), lines(QUEUED, OK, BYE))

    def test_commit_failure(self) -> None:
        """
        A failing commit is 452 4.3.1 (full) or 451 4.3.0, as after DATA.
        """
        session = opened()
        session.spool.configure = lambda writer: setattr(writer, "commit_result", OSError(errno.ENOSPC, "full"))
        self.assertEqual(session.send(bdat(3, last=True) + b"x\r\n"),
                         lines("452 4.3.1 Error: insufficient system storage"))

    def test_spool_unavailable(self) -> None:
        """
        If the spool cannot start the message, the first chunk is 451
        4.3.0 after its octets are read; the rest of the transaction's
        chunks get the same, never a message without its start.
        """
        session = opened()

        def broken(writer: object) -> None:
            raise OSError(errno.EIO, "I/O error")

        session.spool.configure = broken
        failed = "451 4.3.0 Error: queue file write error"
        self.assertEqual(session.send(bdat(2) + b"ab" + bdat(2, last=True) + b"cd" + bdat(1, last=True) + b"e"),
                         lines(failed, failed, NEED_MAIL))

    def test_exception_in_write(self) -> None:
        """
        An unexpected exception while writing a chunk closes the session
        with 421 4.3.0 and discards the message.
        """
        session = opened()

        def explode(data: bytes) -> None:
            raise RuntimeError("disk on fire")

        session.send(bdat(4) + b"ab\r\n")
        session.spool.writers[0].write = explode  # type: ignore[method-assign]
        self.assertEqual(session.send(bdat(2) + b"cd"), lines(f"421 4.3.0 {HOST} Error: internal server error"))
        self.assertTrue(session.closed)
        self.assertEqual(session.spool.writers[0].state, "aborted")


class ConnectionTests(SynchronousTestCase):
    def test_lost_mid_chunk_and_between(self) -> None:
        """
        The connection lost inside a chunk, or between chunks, aborts the
        message and logs it.
        """
        for stream in (bdat(10, last=True) + b"half", bdat(4) + b"ab\r\n"):
            session = opened()
            session.send(stream)
            session.lose()
            self.assertEqual(session.spool.writers[0].state, "aborted")
            self.assertEqual(session.factory.connections.total, 0)
            self.assertIn('service=smtp qid=Q1 event=abort peer=192.0.2.1 session=s1 reason="connection lost during BDAT"',
                          session.log_lines())

    def test_timeout_waiting_for_octets(self) -> None:
        """
        The idle timer runs while the chunk's octets are awaited: 421
        4.4.2 and the message discarded.
        """
        session = opened(settings=SMTPSettings(hostname=HOST, idle_timeout=60))
        session.send(bdat(10) + b"part")
        session.clock.advance(59)
        session.send(b"more")
        session.clock.advance(59)
        self.assertEqual(session.output(), b"")
        session.clock.advance(1)
        self.assertEqual(session.output(), lines(f"421 4.4.2 {HOST} Error: timeout exceeded"))
        self.assertEqual(session.spool.writers[0].state, "aborted")

    def test_drain_waits_for_last_chunk(self) -> None:
        """
        A stop while a chunked message is in flight lets it finish, then
        closes the session.
        """
        session = opened()
        session.send(bdat(4) + b"ab\r\n")
        session.factory.drain(10)
        self.assertFalse(session.closed)
        self.assertEqual(session.send(bdat(1, last=True) + b"x"),
                         lines(QUEUED, f"421 4.3.2 {HOST} Service shutting down, try again later"))
        self.assertTrue(session.closed)

    def test_error_limit(self) -> None:
        """
        Refused chunks count towards the error limit like other refusals.
        """
        session = SMTPHarness()
        output = session.send((bdat(1) + b"x") * MAX_ERRORS)
        self.assertEqual(output, lines(*[NEED_MAIL] * MAX_ERRORS, f"421 4.7.0 {HOST} Error: too many errors"))
        self.assertTrue(session.closed)
