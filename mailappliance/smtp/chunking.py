# -*- test-case-name: tests.test_smtp_chunking -*-
"""
CHUNKING: the BDAT command of the SMTP server (RFC 3030).

C{BDAT <size> [LAST]} is followed, right after its CRLF, by exactly
C{<size>} octets of message data: taken as they are (no dot-stuffing, no
end marker), in whatever pieces the transport delivers, sliced only by the
count still to read. The session reads them even when it refuses the
command, and only then replies (RFC 3030 section 3: the server must
accept and discard the data of a failed BDAT before its 4xx/5xx, so that
none of it is ever read as a command). Commands may come between chunks;
RSET, EHLO, HELO, QUIT and the end of the session discard the message.

What this server does with each case:

  - every accepted chunk that is not the last: C{250 2.0.0}, once its
    octets are read (and, when the spool asked to wait, written);
  - the last: the same checks, header completion and commit as after
    DATA, C{250 2.0.0 Ok: queued as <qid>} once the message is durable;
  - BDAT before MAIL, or without an accepted RCPT: C{503 5.5.1};
  - a size that is not a number of at most 20 digits: the octets that
    follow cannot be counted, so they cannot be told from commands:
    C{501 5.5.4}, then C{421 4.5.0} and the session is closed;
  - a BDAT line ended by a bare LF is not acted on (see
    L{mailappliance.smtp.lines}), so neither are its octets counted:
    C{500 5.5.2}, then C{421 4.5.0} and the session is closed;
  - a readable size followed by something other than C{LAST}: C{501
    5.5.4} after the octets are discarded;
  - chunks adding up to more than the size limit: C{552 5.3.4} (the
    whole chunk discarded unread);
  - a bare CR or LF anywhere in the data, across chunk boundaries
    included: nothing more is written, each chunk still gets its 250, and
    the last C{550 5.6.0}, as after DATA (BINARYMIME is not offered);
  - a refused chunk fails its transaction (RFC 3030 section 3: the client
    must send no more chunks of it): the message is discarded, the
    transaction reset, and chunks the client pipelined after it, up to
    the last, are read, discarded and refused with the same reply.

The session's I/O loop (L{mailappliance.smtp.server}) hands the octets of
the current chunk to L{SMTPChunkingHandlers._chunk_data}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel

from mailappliance.logtext import quote
from mailappliance.smtp import replies
from mailappliance.smtp.commands import BadChunkCommand, ChunkCommand, parse_bdat
from mailappliance.smtp.data import has_bare_line_end
from mailappliance.smtp.events import angle_path
from mailappliance.smtp.policy import SessionPolicy
from mailappliance.smtp.receiver import MessageReceiver
from mailappliance.smtp.replies import Reply
from mailappliance.smtp.transaction import Transaction

_CR = 0x0D
_LF = 0x0A


class ChunkBodyReader:
    """
    The L{mailappliance.smtp.receiver.BodyReader} of a message sent with
    BDAT: passes the octets on as they are, and notes a bare CR or LF.

    A CR at the end of one piece may be followed by its LF at the start of
    the next; only that CR is carried over, so each piece is looked at
    with a few C{bytes.count} calls, whatever its size.

    @ivar bare_line_end: L{True} once a CR not followed by LF, or an LF
        not preceded by CR, has been seen.
    @ivar discarding: set it to L{True} when the message is refused:
        L{feed} then returns no body bytes.
    """

    def __init__(self) -> None:
        self.bare_line_end = False
        self.discarding = False
        # The octets so far end with a CR whose LF may come next.
        self._held_cr = False

    def feed(self, chunk: bytes) -> tuple[bytes, None]:
        """
        @param chunk: the next octets of the message.
        @return: C{(body, None)}: the octets (empty while L{discarding});
            the data never ends here (see L{finish}).
        """
        if chunk and not self.bare_line_end:
            self._check(chunk)
        return (b"" if self.discarding else chunk), None

    def finish(self) -> None:
        """
        The data has ended: a CR at its very end is bare.
        """
        if self._held_cr:
            self._held_cr = False
            self.bare_line_end = True

    def _check(self, chunk: bytes) -> None:
        start = 0
        if self._held_cr:
            if chunk[0] != _LF:
                self.bare_line_end = True
                return
            start = 1
        end = len(chunk)
        self._held_cr = end > start and chunk[end - 1] == _CR
        if self._held_cr:
            end -= 1
        if has_bare_line_end(chunk, start, end):
            self.bare_line_end = True


class Chunk:
    """
    The octets of one BDAT command that are still to be read.

    @ivar size: the chunk size the command gave.
    @ivar remaining: octets still to read.
    @ivar last: whether the command said C{LAST}.
    @ivar receiver: where the octets go, or L{None} to discard them.
    @ivar refusal: the reply to send once they are read, when the command
        was refused (then C{receiver} is L{None}).
    """

    def __init__(self, command: ChunkCommand, receiver: MessageReceiver | None, refusal: Reply | None) -> None:
        self.size = command.size
        self.remaining = command.size
        self.last = command.last
        self.receiver = receiver
        self.refusal = refusal

    def take(self, data: bytes) -> Deferred | None:
        """
        Take the next octets (at most L{remaining}).

        @return: L{None}, or a L{Deferred} to wait for before taking more
            (the writer's backpressure).
        """
        self.remaining -= len(data)
        if self.receiver is None or not data:
            return None
        _, wait = self.receiver.feed(data)
        return wait


class SMTPChunkingHandlers:
    """
    The BDAT command, a mixin of
    L{mailappliance.smtp.server.SMTPServerProtocol}.

    Uses the protocol's C{policy}, C{_helo}, C{_transaction}, C{_context},
    C{_chunk} (the L{Chunk} being read, or L{None}), C{_chunks_refused}
    (the reply that the rest of a failed transaction's chunks get, or
    L{None}), and its methods C{_send}, C{_close}, C{_wait}, C{_respond},
    C{_log_event}, C{_start_message}, C{_reset_transaction},
    C{_end_of_data}.
    """

    policy: SessionPolicy
    _helo: str | None
    _transaction: Transaction | None
    _context: dict[str, str]
    _peer_key: str
    _closing: bool
    _chunk: Chunk | None
    _chunks_refused: Reply | None
    _send: Callable[[Reply], None]
    _close: Callable[[], None]
    _wait: Callable[..., None]
    _respond: Callable[[Any], None]
    _log_event: Callable[..., None]
    _start_message: Callable[..., Any]
    _reset_transaction: Callable[[], None]
    _end_of_data: Callable[..., Any]

    def _bdat(self, argument: bytes) -> None:
        """
        BDAT (RFC 3030 section 2): start reading the chunk's octets; the
        reply is sent once they are read (see the module docstring for
        each case). The session is closed instead when the size cannot be
        read.
        """
        refusal: Reply | None = None
        try:
            command = parse_bdat(argument)
        except BadChunkCommand as e:
            if e.size is None:
                self._send(e.reply)
                if not self._closing:
                    self._send(replies.chunk_size_unknown(self.policy.hostname))
                    self._close()
                return
            command, refusal = ChunkCommand(e.size), e.reply
        if self._helo is None:
            # STARTTLS forgot the session: no transaction is left to fail.
            self._chunks_refused = None
        transaction = self._transaction
        if transaction is not None:
            self._context["from"] = angle_path(transaction.sender)
            if transaction.message is not None:
                self._context["qid"] = transaction.message.queue_id
        if refusal is None:
            refusal = self._chunks_refused or self._chunk_refusal(transaction, command.size)
        if refusal is None:
            assert transaction is not None
            refusal = self._accept_chunk(transaction, command)
        if refusal is not None:
            if transaction is not None or self._chunks_refused is not None:
                # RFC 3030 section 3: a chunk refused fails its transaction.
                self._reset_transaction()
                self._chunks_refused = None if command.last else refusal
            self._chunk = Chunk(command, None, refusal)

    def _chunk_refusal(self, transaction: Transaction | None, size: int) -> Reply | None:
        """
        @return: why a chunk of C{size} octets cannot be taken into
            C{transaction}, or L{None} if it can.
        """
        if transaction is None:
            return replies.NEED_MAIL
        if not transaction.recipients:
            return replies.NO_VALID_RECIPIENTS_FOR_BDAT if transaction.rcpt_tried else replies.NEED_RCPT
        if transaction.message_octets + size > self.policy.max_message_size:
            # Decided before reading: none of the chunk is written.
            return replies.MESSAGE_TOO_BIG
        return None

    def _accept_chunk(self, transaction: Transaction, command: ChunkCommand) -> Reply | None:
        """
        Read the chunk into the transaction's message, starting the
        message (and writing its C{Received:} header) at the first chunk.

        @return: L{None}, or the refusal when the spool cannot start a
            message.
        """
        wait = None
        if transaction.message is None:
            started = self._start_message(transaction, ChunkBodyReader())
            if isinstance(started, Reply):
                return started
            receiver, header = started
            transaction.message = receiver
            self._context["qid"] = receiver.queue_id
            wait = receiver.write_header(header)
        transaction.message_octets += command.size
        self._chunk = Chunk(command, transaction.message, None)
        if wait is not None:
            self._wait(wait, lambda _: None, disk=True)
        return None

    def _chunk_data(self, data: bytes) -> None:
        """
        Take octets of the current chunk (at most what it still lacks);
        once it is complete, answer it.
        """
        chunk = self._chunk
        assert chunk is not None
        wait = chunk.take(data)
        if chunk.remaining:
            if wait is not None:
                self._wait(wait, lambda _: None, disk=True)
            return
        self._chunk = None
        if chunk.refusal is not None:
            self._respond(chunk.refusal)
        elif chunk.last:
            receiver = chunk.receiver
            assert receiver is not None
            receiver.end()
            self._respond(self._end_of_data(receiver, "BDAT"))
        elif wait is not None:
            # The 250 invites the next chunk: not before the spool caught up.
            reply = replies.chunk_received(chunk.size)
            self._wait(wait, lambda _: self._respond(reply), disk=True)
        else:
            self._respond(replies.chunk_received(chunk.size))

    def _abort_chunks(self, reason: str | None = None) -> None:
        """
        The session ends: a message received by BDAT and not yet handed to
        the spool's commit is discarded (nothing may be queued without its
        last chunk, RFC 3030 section 3).

        @param reason: logged with the message's queue id, if given.
        """
        self._chunk = None
        transaction = self._transaction
        if transaction is not None and transaction.message is not None:
            if reason is not None:
                self._log_event(LogLevel.info, event="abort", qid=transaction.message.queue_id,
                                peer=self._peer_key, reason=quote(reason))
            transaction.message.abort()
            transaction.message = None
