# -*- test-case-name: tests.test_pop3_server_retr,tests.test_pop3_server -*-
"""
RETR and TOP for the POP3 server. L{POP3RetrievalHandlers} is this part of
the session, a mixin of L{mailappliance.pop3.server.POP3Protocol}.

The start of the message comes from the session's
L{mailappliance.pop3.readahead.MessageReader}: held already if it was
read ahead, else read now in the disk pool (and the session is busy until
it arrives). A message that fits in its first read goes out in one write;
for a larger one the first chunk is written and the rest streamed by a
L{mailappliance.pop3.transfer.MessageSender}, paused and resumed with
the transport through the session's L{mailappliance.flow.OutputFlow}. Once a message is sent, the following ones are read
ahead. A message sent whole by RETR counts as retrieved, for the UPDATE
at QUIT (L{mailappliance.pop3.update}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailappliance.dotstuff import MessageTransform
from mailappliance.pop3.mailbox import MessageInfo, MessageStart
from mailappliance.pop3.readahead import NOT_HELD, MessageReader
from mailappliance.pop3.transfer import MessageSender, TransferAborted


class POP3RetrievalHandlers:
    """
    Sending a message for RETR or TOP, a mixin of
    L{mailappliance.pop3.server.POP3Protocol}.

    Uses the protocol's C{factory} (C{disk}), C{transport}, C{snapshot},
    C{deleted}, C{retrieved}, C{_log}, C{_peer_key}, C{_closing},
    C{_disconnected}, C{_reader_ahead} (made at login), C{_flow}, and its methods
    C{send_line}, C{_write}, C{block_on}, C{_touch} and C{_user_field}.

    @ivar _sender: the L{MessageSender} streaming a message, if any.
    """

    factory: Any
    transport: Any
    snapshot: list[MessageInfo]
    deleted: set[int]
    retrieved: set[int]
    _log: Logger
    _peer_key: str
    _closing: bool
    _disconnected: bool
    _reader_ahead: MessageReader | None
    _sender: MessageSender | None
    _flow: Any
    send_line: Callable[[bytes], None]
    _write: Callable[[bytes], None]
    block_on: Callable[[Deferred], None]
    _touch: Callable[[], None]
    _user_field: Callable[[], str]

    def send_message(self, index: int, body_lines: int | None) -> None:
        """
        Send message C{index} (RETR, or TOP with C{body_lines}): a message
        that fits in its first read goes out in one write, a larger one is
        streamed after its first chunk.
        """
        start = self._reader_ahead.take(index)
        if start is NOT_HELD:
            d = self._reader_ahead.read(index, self.snapshot[index])
            d.addCallbacks(self._message_opened, self._message_open_failed, callbackArgs=(index, body_lines))
            self.block_on(d)
        elif isinstance(start, OSError):
            self._message_open_failed(Failure(start))
        else:
            streaming = self._message_opened(start, index, body_lines)
            if streaming is not None:
                self.block_on(streaming)

    def _message_open_failed(self, reason: Failure) -> None:
        self._log.failure(
            "service=pop3 event=read-error user={user} peer={peer} session={session}",
            reason,
            user=self._user_field(),
            peer=self._peer_key,
            session=self._session,
        )
        self.send_line(b"-ERR [SYS/TEMP] Cannot read the message")

    def _message_opened(self, start: MessageStart | None, index: int, body_lines: int | None) -> Deferred | None:
        if start is None:
            self.send_line(b"-ERR [SYS/PERM] Message %d no longer exists" % (index + 1,))
            return None
        rest = start.rest
        if self._disconnected:
            if rest is not None:
                self.factory.disk.run(rest.close).addErrback(lambda _: None)
            return None
        if body_lines is None:
            first = b"+OK %d octets\r\n" % (self.snapshot[index].size,)
        else:
            first = b"+OK Top of message follows\r\n"
        transform = MessageTransform(body_lines)
        data = transform.feed(start.data)
        if rest is None or transform.complete:
            if rest is not None:
                # TOP has its lines: the rest of the file is not wanted.
                self.factory.disk.run(rest.close).addErrback(lambda _: None)
            self._write(b"".join((first, data, transform.finish())))
            self._message_sent(None, index, body_lines is None)
            return None
        self.transport.writeSequence((first, data))
        sender = self._sender = MessageSender(self.factory.disk, rest, transform, self.transport, self._touch)
        self._flow.attach(sender)
        d = sender.start()
        d.addBoth(self._stream_ended, index, body_lines is None)
        return d

    def _stream_ended(self, result: Any, index: int, whole: bool) -> None:
        self._sender = None
        self._flow.detach()
        if not isinstance(result, Failure):
            self._message_sent(None, index, whole)
            return
        if result.check(TransferAborted) or self._disconnected:
            return
        # The +OK and part of the message are out: there is no way to
        # tell the client but to drop the connection.
        self._log.failure(
            "service=pop3 event=read-error user={user} peer={peer} session={session}",
            result,
            user=self._user_field(),
            peer=self._peer_key,
            session=self._session,
        )
        self._closing = True
        self.transport.abortConnection()

    def _message_sent(self, result: Any, index: int, whole: bool) -> None:
        if whole:
            self.retrieved.add(index)
        if self._closing:
            return
        # Clients download in order: read the next messages while this one
        # travels (see mailappliance.pop3.readahead).
        self._reader_ahead.read_ahead(self._live_after(index))

    def _live_after(self, index: int) -> Iterator[tuple[int, MessageInfo]]:
        snapshot, deleted = self.snapshot, self.deleted
        for following in range(index + 1, len(snapshot)):
            if following not in deleted:
                yield following, snapshot[following]
