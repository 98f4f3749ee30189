# -*- test-case-name: tests.test_smtp_receiver -*-
"""
Receiving one message body into the spool, between C{354} and the reply to
the end of the data, or from the first BDAT chunk to the last (RFC 3030).

L{MessageReceiver} puts the output of its reader (the L{DataReader} after
DATA, a L{mailappliance.smtp.chunking.ChunkBodyReader} for BDAT) into an
L{IMessageWriter} as it arrives, and enforces what may be refused only
once the whole body has been read (RFC 5321 section 4.2.5: the server must
read the data to its end before it replies): the size limit and bare CR or
LF. Once the message is refused, nothing more is written; the body is
still read to its real end, so that none of it is ever taken for commands.

The body passes through a L{mailappliance.smtp.headers.HeaderCompleter}
on its way, which adds a missing C{Message-ID:} or C{Date:} on the
submission service, and on both services puts an empty line after our
C{Received:} when the message has no header section of its own.

Every octet written also passes a L{mailappliance.queue.content.ContentScan},
so that the envelope records whether the message really holds 8-bit octets
(and where), whatever the client declared.
"""

from __future__ import annotations

import errno
from typing import Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from mailappliance.queue.content import ContentScan
from mailappliance.queue.envelope import Envelope
from mailappliance.smtp.data import DataReader
from mailappliance.smtp.headers import HeaderCompleter
from mailappliance.smtp.replies import (
    BARE_LINE_END_IN_DATA,
    MESSAGE_TOO_BIG,
    QUEUE_FAILED,
    QUEUE_FULL,
    Reply,
)

# Errors of a full disk or quota: RFC 3463 4.3.1 "mail system full".
_STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class BodyReader(Protocol):
    """
    What turns the bytes a client sends into message body bytes, as
    L{DataReader} does.
    """

    bare_line_end: bool
    discarding: bool

    def feed(self, chunk: bytes) -> tuple[bytes, bytes | None]:
        """
        @return: C{(body, rest)}: body bytes (none while C{discarding}),
            and L{None} while the data goes on, else what followed its end.
        """


def commit_failure_reply(reason: Failure) -> Reply:
    """
    @return: C{452 4.3.1} when the commit failed because storage is full,
        else C{451 4.3.0}.
    """
    error = reason.value
    if isinstance(error, OSError) and error.errno in _STORAGE_FULL:
        return QUEUE_FULL
    return QUEUE_FAILED


class MessageReceiver:
    """
    One message body on its way from the client to the spool.

    @ivar writer: the L{IMessageWriter}.
    @ivar body_size: body bytes received (dot-unstuffed), counted until
        the message is refused.
    """

    def __init__(
        self,
        writer: object,
        max_size: int,
        completer: HeaderCompleter | None = None,
        reader: BodyReader | None = None,
    ) -> None:
        """
        @param writer: the spool's L{IMessageWriter} for this message.
        @param max_size: the largest body accepted, in bytes (as received:
            fields the completer adds do not count).
        @param completer: what completes the message's header on its way
            to the writer, or L{None} to store the body as received.
        @param reader: the L{BodyReader}; a new L{DataReader} by default.
        """
        self.writer = writer
        self._completer = completer
        self.body_size = 0
        self._max_size = max_size
        self._reader: BodyReader = reader if reader is not None else DataReader()
        self._too_big = False
        self._finished = False
        self._scan = ContentScan()

    @property
    def queue_id(self) -> str:
        return self.writer.queue_id  # type: ignore[attr-defined]

    @property
    def content(self) -> str:
        """
        What the octets written so far hold (see
        L{mailappliance.queue.envelope.Envelope.content}).
        """
        return self._scan.content

    def write_header(self, header: bytes) -> Deferred | None:
        """
        Write bytes in front of the body (the C{Received:} header).

        @return: as L{IMessageWriter.write}.
        """
        return self._write(header)

    def feed(self, chunk: bytes) -> tuple[bytes | None, Deferred | None]:
        """
        Take the next bytes from the client.

        @return: C{(rest, wait)}: C{rest} is L{None} while the data goes on,
            else the bytes after its end (commands); C{wait} is L{None}, or
            a L{Deferred} to wait for before feeding more (the writer's
            backpressure).
        """
        body, rest = self._reader.feed(chunk)
        wait = None
        if body:
            self.body_size += len(body)
            if self.body_size > self._max_size:
                self._too_big = True
                self._reader.discarding = True
            elif self._reader.bare_line_end:
                self._reader.discarding = True
            else:
                wait = self._write_body(body)
        elif self._reader.bare_line_end:
            self._reader.discarding = True
        if rest is not None and self._completer is not None and self.refusal() is None:
            # The end of the data: what the completer still holds, and any
            # field still missing. Its backpressure need not be waited
            # for: the commit covers every byte written.
            self._write(self._completer.finish())
        return rest, wait

    def end(self) -> None:
        """
        The data has ended where the client said (BDAT LAST), not at an end
        marker the reader found: the reader's C{finish} judges the last
        bytes, and the completer's remainder is written (unless the
        message is refused). Its backpressure need not be waited for, as
        at the end of DATA.
        """
        self._reader.finish()  # type: ignore[attr-defined]
        if self._reader.bare_line_end:
            self._reader.discarding = True
        if self._completer is not None and self.refusal() is None:
            self._write(self._completer.finish())

    def refusal(self) -> Reply | None:
        """
        @return: the reply refusing the message (C{552 5.3.4} too big, C{550
            5.6.0} bare CR or LF), or L{None} if it may be committed.
        """
        if self._too_big:
            return MESSAGE_TOO_BIG
        if self._reader.bare_line_end:
            return BARE_LINE_END_IN_DATA
        return None

    def commit(self, envelope: Envelope) -> Deferred:
        """
        Make the message durable. The writer's commit covers every byte
        already given to C{write}, including any whose backpressure
        L{Deferred} has not fired yet.

        @return: a L{Deferred} firing with the queue id, or failing as
            L{IMessageWriter.commit} does (also when C{commit} raises).
        """
        self._finished = True
        return maybeDeferred(self.writer.commit, envelope)  # type: ignore[attr-defined]

    def abort(self) -> None:
        """
        Discard the message, unless it was handed to L{commit} already.
        Idempotent.
        """
        if not self._finished:
            self._finished = True
            self.writer.abort()  # type: ignore[attr-defined]

    def _write_body(self, body: bytes) -> Deferred | None:
        if self._completer is not None:
            body = self._completer.feed(body)
            if not body:
                return None
        return self._write(body)

    def _write(self, data: bytes) -> Deferred | None:
        self._scan.feed(data)
        return self.writer.write(data)  # type: ignore[attr-defined]
