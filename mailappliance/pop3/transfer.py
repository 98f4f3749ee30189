# -*- test-case-name: tests.test_pop3_transfer -*-
"""
Streaming a message file to a POP3 client (RETR, TOP).

The server sends a message that fits in its first read (nearly all mail)
in one write (L{mailappliance.pop3.readahead}); for a larger one it writes
the first chunk and hands the open file, with the transform that has seen
that chunk, to a L{MessageSender}. That is a push producer registered on
the transport: it reads the rest in the disk pool one chunk at a time
(the last read and the close in one job), passes each chunk through the
L{MessageTransform} and writes the result, and stops reading whenever the
transport pauses it (its write buffer is full), so a session holds at most
about one chunk of the message in memory whatever the message size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.dotstuff import MessageTransform

READ_CHUNK = 64 * 1024


def read_chunk(file: BinaryIO, size: int) -> tuple[bytes, bool]:
    """
    Read the next chunk of a message file and, at its end, close it: the
    last read and the close are one disk job.

    @return: the bytes and whether the file ended (and is now closed). A
        buffered read of a regular file returns fewer bytes than asked
        only at the end.
    @raise OSError: as the read does (the file is left open).
    """
    data = file.read(size)
    if len(data) < size:
        file.close()
        return data, True
    return data, False


class TransferAborted(Exception):
    """
    The transfer was stopped before the end (the connection went away).
    """


@implementer(IPushProducer)
class MessageSender:
    """
    Send one message file through a transform to a consumer.

    The caller registers the sender on the consumer, calls L{start}, and
    unregisters it when the returned L{Deferred} fires. The file is closed
    (in the disk pool) in every case.
    """

    def __init__(
        self,
        disk: Any,
        file: BinaryIO,
        transform: MessageTransform,
        consumer: Any,
        progress: Callable[[], None] = lambda: None,
        chunk_size: int = READ_CHUNK,
    ) -> None:
        """
        @param disk: the disk pool (C{run(f, *args) -> Deferred}).
        @param file: the open message file, at its start or after the
            bytes the caller already passed through C{transform}.
        @param transform: the transform of this response.
        @param consumer: where the bytes go (the transport).
        @param progress: called after each chunk written (the session resets
            its idle timer there).
        @param chunk_size: the read size.
        """
        self._disk = disk
        self._file = file
        self._transform = transform
        self._consumer = consumer
        self._progress = progress
        self._chunk_size = chunk_size
        self._paused = False
        self._reading = False
        self._pumping = False
        self._finished = False
        self._file_open = True
        self._done: Deferred = Deferred()

    def start(self) -> Deferred:
        """
        Begin sending.

        @return: a L{Deferred} firing with L{None} once the whole response
            (terminator included) is written; failing with the read error
            (L{OSError}) or L{TransferAborted} if stopped.
        """
        self._pump()
        return self._done

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._finish(Failure(TransferAborted()))

    # internals

    def _pump(self) -> None:
        # Reads may complete synchronously (a synchronous disk pool) and the
        # consumer may pause us from inside write(): loop rather than
        # recurse, and let at most one read be outstanding.
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._paused or self._reading or self._finished):
                self._reading = True
                self._disk.run(read_chunk, self._file, self._chunk_size).addCallbacks(
                    self._chunk_read, self._read_failed
                )
        finally:
            self._pumping = False

    def _chunk_read(self, result: tuple[bytes, bool]) -> None:
        chunk, ended = result
        self._reading = False
        if ended:
            self._file_open = False
        if self._finished:
            self._close_file()
            return
        data = self._transform.feed(chunk)
        if data:
            self._consumer.write(data)
        self._progress()
        if not (ended or self._transform.complete):
            self._pump()
            return
        self._consumer.write(self._transform.finish())
        self._progress()
        self._finish(None)

    def _read_failed(self, reason: Failure) -> None:
        self._reading = False
        if self._finished:
            self._close_file()
            return
        self._finish(reason)

    def _finish(self, result: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        if not self._reading:
            # Otherwise the read still running in the pool closes it when
            # it returns: never close a file under a read in another thread.
            self._close_file()
        if result is None:
            self._done.callback(None)
        else:
            self._done.errback(result)

    def _close_file(self) -> None:
        if self._file_open:
            self._file_open = False
            self._disk.run(self._file.close).addErrback(lambda _: None)
