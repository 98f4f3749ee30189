# -*- test-case-name: tests.test_smtp_client_body -*-
"""
Streaming a spooled message body to the remote server after DATA.

L{BodyProducer} reads the spool file in chunks through the disk pool (never
on the reactor thread; one job per chunk, the end of the file found in the
job that reads the last chunk; for a L{SpoolFile}, at its C{length}: the
envelope that follows the body in a queue file is never read), dot-stuffs them with a L{DotStuffer}, and writes
them to the transport as a streaming producer: when the transport's buffer
is full it pauses us and we read nothing more until it resumes us, so the
memory used is bounded by one chunk plus the transport's buffer whatever
the message size.

While paused we are waiting for the network to take our data; RFC 5321
section 4.5.3.2.5 allows 3 minutes for each such wait ("data block").
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from mailappliance.dotstuff import DotStuffer
from mailappliance.smtp.client_protocol import ConnectionProblem

# Bytes read from the spool file at a time.
BODY_CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class SpoolFile:
    """
    An open queue file and the length of the message in it: the body is
    its first C{length} bytes (a queue file of layout version 2 goes on
    with the envelope, which must never go on the wire).

    L{mailappliance.smtp.client.deliver} opens one and hands it, through
    the session, to L{BodyProducer} in place of a bare descriptor.

    @ivar fd: the descriptor, open for reading.
    @ivar length: the body's length, the envelope's C{size}.
    """

    fd: int
    length: int


def read_chunk(fd: int, size: int, offset: int, end: int | None = None) -> tuple[bytes, bool]:
    """
    Read the next chunk of the spool file. Blocking: runs in the disk pool.

    Only a read that returns nothing proves the end of a file, but a read
    shorter than asked for almost always comes right before it; so that
    second read is made here, in the same job, instead of costing another
    trip through the disk pool (a message smaller than a chunk is read in
    one job).

    @param fd: the file, open for reading.
    @param size: the most bytes to return.
    @param offset: where to read from.
    @param end: where the message ends, or L{None} for the end of the
        file. Reading stops there, without a read to prove it.
    @return: the bytes read (fewer than C{size} only at the end, possibly
        none), and whether the end of the message was reached.
    @raise OSError: if it cannot be read, or (C{EIO}) if the file ends
        before C{end}: a truncated message must not be sent as complete.
    """
    if end is not None:
        size = min(size, end - offset)
        chunk = os.pread(fd, size, offset) if size > 0 else b""
        if offset + len(chunk) == end:
            return chunk, True
        if len(chunk) < size:
            raise OSError(errno.EIO, "queued message shorter than its envelope says")
        return chunk, False
    chunk = os.pread(fd, size, offset)
    if len(chunk) == size:
        return chunk, False
    more = os.pread(fd, size - len(chunk), offset + len(chunk))
    if more:
        # The file grew (it does not, once spooled); carry on reading.
        return chunk + more, False
    return chunk, True


@implementer(IPushProducer)
class BodyProducer:
    """
    Sends one message body, dot-stuffed and ended with C{.CRLF}.

    @param disk: a L{mailappliance.disk.DiskPool} (or
        L{SynchronousDiskPool}) to read with.
    @param fd: a L{SpoolFile} (the body is its first C{length} bytes), or
        a bare file descriptor open for reading on a file that is all body;
        read with C{pread} from offset 0, so one descriptor serves any
        number of attempts; not closed here.
    @param clock: an L{IReactorTime} for the data block time-out.
    @param block_timeout: seconds we may stay paused before giving up.
    @param chunk_size: bytes per read.
    """

    def __init__(self, disk, fd: int, clock, block_timeout: float, chunk_size: int = BODY_CHUNK_SIZE) -> None:
        self._disk = disk
        if isinstance(fd, SpoolFile):
            self._fd, self._end = fd.fd, fd.length
        else:
            self._fd, self._end = fd, None
        self._clock = clock
        self._block_timeout = block_timeout
        self._chunk_size = chunk_size
        self._paused = False
        self._resumed: defer.Deferred | None = None
        self._timer = None
        self._problem: ConnectionProblem | None = None
        self.bytes_sent = 0

    def send_to(self, consumer) -> defer.Deferred:
        """
        Write the body to C{consumer}, which must already have this
        producer registered (streaming).

        @return: a L{Deferred} firing with the number of bytes written
            (the terminating C{.CRLF} included) once all were written, or
            failing with L{ConnectionProblem}: the consumer stopped us (the
            connection was lost), we stayed paused longer than the time-out,
            or the spool file could not be read (then C{retry_elsewhere} is
            L{False}: no other host would fare better).
        """
        return self._send(consumer)

    @defer.inlineCallbacks
    def _send(self, consumer):
        stuffer = DotStuffer()
        offset = 0
        try:
            while True:
                yield self._unpaused()
                try:
                    chunk, at_end = yield self._disk.run(read_chunk, self._fd, self._chunk_size, offset, self._end)
                except OSError as e:
                    raise ConnectionProblem(
                        f"cannot read the queued message: {e.strerror or e}", "4.3.0", retry_elsewhere=False
                    )
                offset += len(chunk)
                # The transport may have paused us while the read ran.
                yield self._unpaused()
                if at_end:
                    # The last chunk and the end of data in one write.
                    self._write(consumer, stuffer.feed(chunk) + stuffer.finish())
                    break
                self._write(consumer, stuffer.feed(chunk))
        finally:
            self._cancel_timer()
        return self.bytes_sent

    def _write(self, consumer, data: bytes) -> None:
        if data:
            self.bytes_sent += len(data)
            consumer.write(data)

    def _unpaused(self) -> defer.Deferred:
        if self._problem is not None:
            return defer.fail(self._problem)
        if not self._paused:
            return defer.succeed(None)
        self._resumed = defer.Deferred()
        return self._resumed

    # IPushProducer

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: stop writing until resumed, for at
        most the data block time-out.
        """
        if self._paused or self._problem is not None:
            return
        self._paused = True
        self._timer = self._clock.callLater(self._block_timeout, self._timed_out)

    def resumeProducing(self) -> None:
        """
        The transport wants more data.
        """
        if not self._paused:
            return
        self._paused = False
        self._cancel_timer()
        waiting, self._resumed = self._resumed, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        """
        The connection is gone: stop for good.
        """
        self._stop(ConnectionProblem("connection lost while sending the message"))

    def _timed_out(self) -> None:
        self._timer = None
        self._stop(ConnectionProblem(f"timed out after {self._block_timeout:g}s sending the message"))

    def _stop(self, problem: ConnectionProblem) -> None:
        if self._problem is not None:
            return
        self._problem = problem
        self._cancel_timer()
        waiting, self._resumed = self._resumed, None
        if waiting is not None:
            waiting.errback(problem)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
