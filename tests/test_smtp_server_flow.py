"""
Tests for L{mailappliance.smtp.server}: pipelining, flow control, limits,
time-outs and robustness against arbitrary input.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.flow import CLOSE_TIMEOUT
from mailappliance.smtp.lines import MAX_COMMAND_LINE
from mailappliance.smtp.policy import SMTPSettings
from mailappliance.smtp.server import MAX_ERRORS, MAX_PENDING_INPUT
from mailappliance.testing import SMTPHarness
from tests.test_smtp_server import BYE, EHLO, HOST, OK, RCPT_OK, SENDER_OK, START, UNKNOWN_USER, lines

TRANSACTION = (
    b"EHLO client.test\r\n"
    b"MAIL FROM:<sender@elsewhere.test>\r\n"
    b"RCPT TO:<alice@example.test>\r\n"
    b"RCPT TO:<nobody@example.test>\r\n"
    b"RCPT TO:<bob@example.test>\r\n"
    b"DATA\r\n"
    b"Subject: pipelined\r\n"
    b"\r\n"
    b"RSET\r\n"
    b"..MAIL FROM:<x@y.test>\r\n"
    b".\r\n"
    b"QUIT\r\n"
)
TRANSACTION_REPLIES = lines(*EHLO, SENDER_OK, RCPT_OK, UNKNOWN_USER, RCPT_OK, START, "250 2.0.0 Ok: queued as Q1", BYE)
TRANSACTION_BODY = b"Subject: pipelined\r\n\r\nRSET\r\n.MAIL FROM:<x@y.test>\r\n"


class PipeliningTests(SynchronousTestCase):
    def test_whole_transaction_with_slow_lookups(self) -> None:
        """
        A whole transaction in one write, with lookups that answer later:
        one command at a time, replies in order, the body never read as
        commands.
        """
        session = SMTPHarness()
        session.resolver.hold = True
        self.assertEqual(session.send(TRANSACTION), lines(*EHLO, SENDER_OK))
        self.assertEqual([m.key for m, _, _ in session.resolver.pending], ["alice@example.test"])
        session.resolver.answer(0)
        self.assertEqual(session.output(), lines(RCPT_OK))
        self.assertEqual([m.key for m, _, _ in session.resolver.pending], ["nobody@example.test"])
        session.resolver.answer(0)
        self.assertEqual(session.output(), lines(UNKNOWN_USER))
        self.assertEqual(session.spool.writers, [])
        session.resolver.answer(0)
        self.assertEqual(session.output(), lines(RCPT_OK, START, "250 2.0.0 Ok: queued as Q1", BYE))
        self.assertEqual(bytes(session.spool.writers[0].data).split(b" +0000\r\n", 1)[1], TRANSACTION_BODY)
        self.assertEqual(session.resolver.asked, ["alice@example.test", "nobody@example.test", "bob@example.test"])

    def test_half_closed_after_pipelining(self) -> None:
        """
        A client that pipelines a whole transaction and half-closes the
        connection (C{printf ... | nc -N}) while lookups are pending gets
        every reply, its message is queued, and then the server closes.
        """
        session = SMTPHarness()
        session.resolver.hold = True
        replies = session.send(TRANSACTION)
        session.protocol.readConnectionLost()
        self.assertFalse(session.closed)
        for _ in range(3):
            session.resolver.answer(0)
        self.assertEqual(replies + session.output(), TRANSACTION_REPLIES)
        self.assertEqual(session.spool.writers[0].state, "committed")
        self.assertTrue(session.closed)

    def test_half_closed_during_data(self) -> None:
        """
        Half-closed before the data ended: what came is answered, the
        message is not queued (logged as aborted), and the server closes.
        """
        session = SMTPHarness()
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\npart")
        session.protocol.readConnectionLost()
        self.assertTrue(session.closed)
        self.assertEqual(session.spool.writers[0].state, "aborted")
        self.assertIn('reason="connection closed during DATA"', session.log_lines()[-1])

    def test_sessions_answered_out_of_order(self) -> None:
        """
        Lookups of several sessions answered in reverse order: each
        session's replies stay in its own order.
        """
        first = SMTPHarness()
        second = SMTPHarness(factory=first.factory, peer="192.0.2.2")
        first.resolver.hold = True
        early = {first: first.send(TRANSACTION), second: second.send(TRANSACTION)}
        for _ in range(3):
            # The newest lookup first: the other session's is answered later.
            first.resolver.answer(-1)
            first.resolver.answer(-1)
        self.assertEqual(first.resolver.pending, [])
        # The second session's lookups were answered first: its message
        # was started, and so numbered, first.
        for session, qid, peer in ((first, b"Q2", b"192.0.2.1"), (second, b"Q1", b"192.0.2.2")):
            expected = TRANSACTION_REPLIES.replace(b"Q1", qid).replace(b"192.0.2.1", peer)
            self.assertEqual(early[session] + session.output(), expected)
        for writer in first.spool.writers:
            self.assertEqual(bytes(writer.data).split(b" +0000\r\n", 1)[1], TRANSACTION_BODY)
        self.assertEqual(len(first.spool.writers), 2)

    def test_every_split_offset(self) -> None:
        """
        The session's input split at every offset gives the same replies
        and the same stored message.
        """
        for offset in range(len(TRANSACTION) + 1):
            session = SMTPHarness()
            output = session.send(TRANSACTION[:offset], TRANSACTION[offset:])
            self.assertEqual(output, TRANSACTION_REPLIES, offset)
            body = bytes(session.spool.writers[0].data).split(b" +0000\r\n", 1)[1]
            self.assertEqual(body, TRANSACTION_BODY, offset)

    def test_byte_at_a_time(self) -> None:
        """
        One byte per read works too.
        """
        session = SMTPHarness()
        output = session.send(*[bytes([b]) for b in TRANSACTION])
        self.assertEqual(output, TRANSACTION_REPLIES)

    def test_backlog_pauses_transport(self) -> None:
        """
        While a lookup is pending, reading is paused once more than
        L{MAX_PENDING_INPUT} bytes wait, and resumed when it is answered.
        """
        session = SMTPHarness()
        session.resolver.hold = True
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.transport.producerState, "producing")
        session.send(b"NOOP\r\n" * (MAX_PENDING_INPUT // 6 + 1))
        self.assertEqual(session.transport.producerState, "paused")
        session.resolver.answer(0)
        self.assertEqual(session.transport.producerState, "producing")
        self.assertEqual(session.output(), lines(RCPT_OK, *[OK] * (MAX_PENDING_INPUT // 6 + 1)))


class BackpressureTests(SynchronousTestCase):
    def test_pause_and_resume(self) -> None:
        """
        When the writer asks to wait, the transport is paused and no more
        body is written until its L{Deferred} fires; input that still
        arrives is held and written afterwards, in order.
        """
        session = SMTPHarness()
        session.spool.configure = lambda writer: setattr(writer, "writes_wait", True)
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.send(b"DATA\r\n"), lines(START))
        writer = session.spool.writers[0]
        # The Received: header's write asked to wait.
        self.assertEqual(session.transport.producerState, "paused")
        header = bytes(writer.data)
        session.send(b"first\r\n", b"second\r\n")
        self.assertEqual(bytes(writer.data), header)
        writer.waits[0].callback(None)
        # No header section: an empty line after ours.
        self.assertEqual(bytes(writer.data), header + b"\r\nfirst\r\nsecond")
        self.assertEqual(session.transport.producerState, "paused")
        writer.waits[1].callback(None)
        self.assertEqual(session.transport.producerState, "producing")
        self.assertEqual(session.send(b".\r\nNOOP\r\n"), lines("250 2.0.0 Ok: queued as Q1", OK))
        self.assertEqual(bytes(writer.data), header + b"\r\nfirst\r\nsecond\r\n")
        self.assertEqual(session.transport.producerState, "producing")


class LineLengthTests(SynchronousTestCase):
    def test_too_long_then_usable(self) -> None:
        """
        A command line over 512 octets is 500 5.5.2; the session goes on.
        """
        session = SMTPHarness()
        self.assertEqual(
            session.send(b"NOOP " + b"x" * MAX_COMMAND_LINE + b"\r\nNOOP\r\n"),
            lines("500 5.5.2 Error: line too long", OK),
        )

    def test_endless_line_drained(self) -> None:
        """
        A line of 10 MB arriving in pieces is dropped as it comes (memory
        stays bounded), answered once, and the session goes on.
        """
        session = SMTPHarness()
        for _ in range(160):
            self.assertEqual(session.send(b"x" * 65536), b"")
            self.assertLess(session.protocol._lines.buffered, MAX_COMMAND_LINE)
        self.assertEqual(session.send(b"\r\nEHLO client.test\r\n"), lines("500 5.5.2 Error: line too long", *EHLO))

    def test_bare_lf_answered_at_once(self) -> None:
        """
        A command ended by a bare LF is not acted on, but answered at once
        with 500 5.5.2 "bare <LF> received" (not left waiting for a CRLF
        until the idle time-out); its bytes are dropped up to the LF, so
        the session stays in step and the next CRLF command is answered
        as usual.
        """
        session = SMTPHarness()
        bare_lf = "500 5.5.2 Error: bare <LF> received"
        self.assertEqual(session.send(b"EHLO client.test\n"), lines(bare_lf))
        self.assertEqual(session.send(b"QUIT\n"), lines(bare_lf))
        self.assertFalse(session.closed)
        self.assertEqual(session.protocol._lines.buffered, 0)
        self.assertEqual(session.send(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\nNOOP\r\n"),
                         lines(*EHLO, bare_lf, OK))
        # The MAIL was not acted on: there is no transaction.
        self.assertEqual(session.send(b"RCPT TO:<alice@example.test>\r\n"),
                         lines("503 5.5.1 Error: need MAIL command"))
        self.assertEqual(session.send(b"QUIT\r\n"), lines(BYE))
        self.assertTrue(session.closed)

    def test_bare_lf_after_bdat_closes(self) -> None:
        """
        A BDAT line ended by a bare LF is not acted on, so the chunk's
        octets that follow it at once cannot be counted or told from
        commands: 500, then 421 4.5.0, and the session is closed before
        they are read (as for a BDAT whose size cannot be read).
        """
        for line in (b"BDAT 5 LAST\n", b"bdat 5\n", b"BDAT\n"):
            session = SMTPHarness()
            session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
            output = session.send(line + b"RSET\r\n")
            self.assertEqual(output, lines("500 5.5.2 Error: bare <LF> received",
                                           f"421 4.5.0 {HOST} Error: BDAT command ended by a bare <LF>, "
                                           "closing connection"), line)
            self.assertTrue(session.closed)
            self.assertEqual(session.spool.writers, [])

    def test_bare_lf_counts_as_error(self) -> None:
        """
        Each bare-LF reply counts toward L{MAX_ERRORS}, like every 500.
        """
        session = SMTPHarness()
        output = session.send(b"NOOP\n" * MAX_ERRORS + b"NOOP\r\n")
        bare_lf = "500 5.5.2 Error: bare <LF> received"
        self.assertEqual(output, lines(*[bare_lf] * MAX_ERRORS, f"421 4.7.0 {HOST} Error: too many errors"))
        self.assertTrue(session.closed)

    def test_mail_and_auth_limits(self) -> None:
        """
        MAIL may be up to 1024 octets, AUTH up to 12288.
        """
        session = SMTPHarness()
        session.send(b"EHLO c\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<a@b.test>" + b" " * 900 + b"\r\n"), lines(SENDER_OK))
        self.assertEqual(session.send(b"RCPT TO:<a@b.test>" + b" " * 1100 + b"\r\n"),
                         lines("500 5.5.2 Error: line too long"))
        self.assertEqual(session.send(b"AUTH PLAIN " + b"A" * 12000 + b"\r\n"),
                         lines("503 5.5.1 Error: authentication not enabled"))
        self.assertEqual(session.send(b"AUTH PLAIN " + b"A" * 12300 + b"\r\n"),
                         lines("500 5.5.2 Error: line too long"))


class OutputBackpressureTests(SynchronousTestCase):
    def test_client_not_reading(self) -> None:
        """
        While the transport holds more than it can send (it paused the
        session's output), no further command is answered and reading
        stops once the waiting input passes its limit, so a client that
        sends commands but never reads cannot make the server buffer
        replies without end; when the transport drains, the commands
        waiting are answered in order.
        """
        session = SMTPHarness()
        session.send(b"EHLO c\r\n")
        flow = session.transport.producer
        flow.pauseProducing()
        self.assertEqual(session.send(b"NOOP\r\nRSET\r\n"), b"")
        self.assertEqual(session.transport.producerState, "producing")
        session.send(b"NOOP\r\n" * (MAX_PENDING_INPUT // 6 + 1))
        self.assertEqual(session.output(), b"")
        self.assertEqual(session.transport.producerState, "paused")
        flow.resumeProducing()
        self.assertEqual(session.output(), lines(*["250 2.0.0 Ok"] * (MAX_PENDING_INPUT // 6 + 3)))
        self.assertEqual(session.transport.producerState, "producing")


class TimeoutTests(SynchronousTestCase):
    def test_idle_timeout(self) -> None:
        """
        A silent client gets 421 4.4.2 after C{idle_timeout}; any input
        restarts the timer.
        """
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, idle_timeout=60))
        session.clock.advance(59)
        self.assertEqual(session.send(b"NO"), b"")
        session.clock.advance(59)
        self.assertEqual(session.output(), b"")
        self.assertFalse(session.closed)
        session.clock.advance(1)
        self.assertEqual(session.output(), lines(f"421 4.4.2 {HOST} Error: timeout exceeded"))
        self.assertTrue(session.closed)
        session.lose()
        self.assertEqual(session.clock.getDelayedCalls(), [])

    def test_close_deadline(self) -> None:
        """
        A session closed at its idle time-out whose connection does not go
        (a client that reads nothing, or never ends its TLS handshake) is
        aborted L{CLOSE_TIMEOUT} seconds later, and its place in the
        connection limits is freed.
        """
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, idle_timeout=60))
        session.clock.advance(60)
        self.assertTrue(session.closed)
        session.clock.advance(CLOSE_TIMEOUT - 1)
        self.assertFalse(session.transport.disconnected)
        session.clock.advance(1)
        self.assertTrue(session.transport.disconnected)
        session.lose()
        self.assertEqual(session.factory.connections.total, 0)
        self.assertEqual(session.clock.getDelayedCalls(), [])

    def test_no_timeout_while_server_busy(self) -> None:
        """
        The timer does not run while the server is deciding (a slow
        lookup); it restarts when the reply is sent.
        """
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, idle_timeout=60))
        session.resolver.hold = True
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
        session.clock.advance(600)
        self.assertFalse(session.closed)
        session.resolver.answer(0)
        session.clock.advance(59)
        self.assertFalse(session.closed)
        session.clock.advance(1)
        self.assertTrue(session.closed)

    def test_timeout_during_data(self) -> None:
        """
        A time-out in the middle of the data aborts the message.
        """
        session = SMTPHarness()
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\npart")
        session.clock.advance(300)
        self.assertEqual(session.output(), lines(f"421 4.4.2 {HOST} Error: timeout exceeded"))
        self.assertEqual(session.spool.writers[0].state, "aborted")


class ConnectionLimitTests(SynchronousTestCase):
    def test_total(self) -> None:
        """
        Beyond C{max_connections}, a new session gets 421 4.7.0 and is
        closed; a released slot can be used again.
        """
        settings = SMTPSettings(hostname=HOST, max_connections=2)
        first = SMTPHarness(settings=settings, peer="192.0.2.1")
        second = SMTPHarness(factory=first.factory, peer="192.0.2.2")
        third = SMTPHarness(factory=first.factory, peer="192.0.2.3", connect=False)
        self.assertEqual(third.connect(), lines(f"421 4.7.0 {HOST} Error: too many connections"))
        self.assertTrue(third.closed)
        self.assertEqual(third.log_lines()[-1],
                         'service=smtp event=reject peer=192.0.2.3 session=s1 code=421 status=4.7.0 '
                         f'reason="{HOST} Error: too many connections"')
        third.lose()
        self.assertFalse(second.closed)
        first.lose()
        fourth = SMTPHarness(factory=first.factory, peer="192.0.2.3", connect=False)
        self.assertEqual(fourth.connect(), lines(f"220 2.0.0 {HOST} ESMTP mailappliance"))
        self.assertEqual(first.factory.connections.total, 2)

    def test_per_peer(self) -> None:
        """
        Beyond C{max_connections_per_ip} from one address, 421 4.7.0;
        other addresses are not affected.
        """
        settings = SMTPSettings(hostname=HOST, max_connections_per_ip=1)
        first = SMTPHarness(settings=settings, peer="192.0.2.1")
        again = SMTPHarness(factory=first.factory, peer="192.0.2.1", connect=False)
        other = SMTPHarness(factory=first.factory, peer="192.0.2.9", connect=False)
        self.assertEqual(again.connect(), lines(f"421 4.7.0 {HOST} Error: too many connections from your address"))
        self.assertTrue(again.closed)
        self.assertEqual(other.connect(), lines(f"220 2.0.0 {HOST} ESMTP mailappliance"))


class ErrorLimitTests(SynchronousTestCase):
    def test_too_many_errors(self) -> None:
        """
        After L{MAX_ERRORS} replies of 500 or above the session is closed
        with 421 4.7.0; what was pipelined after is not read.
        """
        session = SMTPHarness()
        output = session.send(b"BOGUS\r\n" * MAX_ERRORS + b"NOOP\r\n")
        unknown = "500 5.5.2 Error: command not recognized"
        self.assertEqual(output, lines(*[unknown] * MAX_ERRORS, f"421 4.7.0 {HOST} Error: too many errors"))
        self.assertTrue(session.closed)

    def test_http_request(self) -> None:
        """
        An HTTP request line closes the session with 421 at once.
        """
        session = SMTPHarness()
        output = session.send(b"POST / HTTP/1.1\r\nHost: mx.example.test\r\n\r\nMAIL FROM:<a@b.test>\r\n")
        self.assertEqual(output, lines(f"421 4.7.0 {HOST} Error: this is an SMTP server, not HTTP"))
        self.assertTrue(session.closed)


class ConnectionLostTests(SynchronousTestCase):
    def test_lost_mid_data(self) -> None:
        """
        The connection lost during DATA aborts the message.
        """
        session = SMTPHarness()
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhalf a mess")
        session.lose()
        self.assertEqual(session.spool.writers[0].state, "aborted")
        self.assertEqual(session.factory.connections.total, 0)
        self.assertIn("service=smtp qid=Q1 event=abort peer=192.0.2.1 session=s1 reason=\"connection lost during DATA\"",
                      session.log_lines())

    def test_lost_during_commit(self) -> None:
        """
        The connection lost while the message is being committed: the
        commit goes on (the message is not aborted), nothing is written.
        """
        session = SMTPHarness()
        session.spool.configure = lambda writer: setattr(writer, "commit_result", "hold")
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n")
        session.output()
        session.lose()
        writer = session.spool.writers[0]
        writer.commit_deferred.callback("Q1")
        self.assertEqual((writer.state, writer.aborts), ("committed", 0))
        self.assertEqual(session.output(), b"")

    def test_lost_during_lookup(self) -> None:
        """
        A lookup answered after the connection is gone is ignored.
        """
        session = SMTPHarness()
        session.resolver.hold = True
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        session.output()
        session.lose()
        session.resolver.answer(0)
        self.assertEqual(session.output(), b"")
        self.assertEqual(session.spool.writers, [])


class UnexpectedErrorTests(SynchronousTestCase):
    def test_exception_closes_only_its_session(self) -> None:
        """
        An unexpected exception is logged with its traceback and closes
        its session with 421 4.3.0; other sessions go on.
        """
        session = SMTPHarness()
        other = SMTPHarness(factory=session.factory, peer="192.0.2.8")

        def explode(data: bytes) -> None:
            raise RuntimeError("disk on fire")

        session.spool.configure = lambda writer: setattr(writer, "write", explode)
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(session.send(b"DATA\r\n"), lines(START, f"421 4.3.0 {HOST} Error: internal server error"))
        self.assertTrue(session.closed)
        failures = [e["log_failure"].value for e in session.events if "log_failure" in e]
        self.assertEqual([str(f) for f in failures], ["disk on fire"])
        self.assertEqual(other.send(b"NOOP\r\n"), lines(OK))


# A reply line: code, separator, enhanced status code (RFC 3463).
REPLY_LINE = re.compile(rb"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}( |$)")
# The lines of the EHLO reply (RFC 5321 section 4.1.1.1) carry none.
EHLO_LINE = re.compile(rb"^250[ -][A-Za-z0-9][A-Za-z0-9.-]*( |$)")

# Whole command lines (so that sessions get as far as DATA and commit),
# pieces of lines, line-end variants and junk.
FRAGMENTS = [
    b"EHLO c\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
    b"MAIL FROM:<a@b.test> SIZE=100 SMTPUTF8\r\n",
    b"MAIL FROM:<>",
    b" BODY=8BITMIME",
    b"RCPT TO:<alice@example.test>\r\n",
    b"RCPT TO:<x@elsewhere.test>\r\n",
    "RCPT TO:<ü@example.test>\r\n".encode(),
    b"RCPT TO:<nobody@example.test>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 2 X\r\n",
    b"BDAT x\r\n",
    b"RSET\r\n",
    b"NOOP",
    b"VRFY x\r\n",
    b"QUIT\r\n",
    b"GET / HTTP/1.1\r\n",
    b"Subject: x\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\x00\xff",
    b"x" * 700,
]


_FRAGMENT = st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=20))


@st.composite
def input_streams(draw: st.DrawFn) -> bytes:
    """
    Either fragments and junk in any order, or a good pipelined
    transaction (which reaches DATA, the body and the commit) with
    fragments and junk inserted anywhere in it.
    """
    insertions = draw(st.lists(st.tuples(st.integers(0, len(TRANSACTION)), _FRAGMENT), max_size=8))
    if draw(st.booleans()):
        return b"".join(fragment for _, fragment in insertions) + b"".join(draw(st.lists(_FRAGMENT, max_size=30)))
    stream, last = [], 0
    for position, fragment in sorted(insertions, key=lambda item: item[0]):
        stream += [TRANSACTION[last:position], fragment]
        last = position
    return b"".join(stream) + TRANSACTION[last:]


class RobustnessTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        stream=input_streams(),
        cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
        small=st.booleans(),
    )
    def test_arbitrary_input(self, stream: bytes, cuts: list[int], small: bool) -> None:
        """
        Arbitrary bytes, split anywhere, never raise out of
        C{dataReceived}, never cause an internal error, and every reply
        line carries an enhanced status code (EHLO lines excepted). When
        the session ends, every message is committed or aborted.
        """
        points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
        size = 1024 if small else 26214400
        session = SMTPHarness(settings=SMTPSettings(hostname=HOST, max_message_size=size), peer="127.0.0.1")
        output = session.send(*[stream[a:b] for a, b in zip(points, points[1:])])
        self.assertEqual([e for e in session.events if "log_failure" in e], [])
        self.assertTrue(output == b"" or output.endswith(b"\r\n"), output)
        for line in output.split(b"\r\n")[:-1]:
            self.assertTrue(REPLY_LINE.match(line) or EHLO_LINE.match(line), line)
        self.assertNotIn(b" 4.3.0 " + HOST.encode() + b" Error: internal", output)
        session.lose()
        self.assertEqual(session.factory.connections.total, 0)
        self.assertEqual({w.state for w in session.spool.writers} - {"committed", "aborted"}, set())
