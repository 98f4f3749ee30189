# -*- test-case-name: tests.test_queue_writer -*-
"""
Receiving one message into the spool: L{SpoolWriter}, the
L{IMessageWriter} that L{mailappliance.queue.spool.Spool.new_message}
returns.

The body is streamed to C{tmp/<qid>} (the queue file of layout version 2,
L{mailappliance.queue.layout}) in the disk pool, in chunks, one
write job at a time so that the bytes land in order. Memory is bounded by
backpressure: when more than L{HIGH_WATER} bytes are buffered or being
written, L{SpoolWriter.write} returns a L{Deferred} the caller waits for
(pausing its transport) before it writes more.

L{SpoolWriter.commit} is the durability point of the whole server (SPEC
section 5: "Mail is accepted (250 after DATA) only once it is durable on
disk"). It does, in this order:

  1. wait for every body write to finish;
  2. append what is still buffered (for a small message, the whole body),
     the envelope and its trailer, in one C{write} for a small message
     (one disk job does steps 2 and 3); fsync the file, close it;
  3. rename it to C{messages/<qid>}: the commit point. A crash before it
     leaves only C{tmp/<qid>}, which recovery removes; after it the file
     is complete, having been fsynced first;
  4. fsync C{messages/} (shared with other commits: group commit);
  5. only then fire with the queue id.

A small message thus costs one file creation, one write, one file fsync,
one rename and its share of one directory fsync.

A body too large to hold in memory (past L{CHUNK_SIZE}), for a message
whose envelope was given at the start (C{expected}, as SMTP does), may
instead go to a stream from the spool's C{on_stream} hook, the queue
manager's direct delivery into the one Maildir it is for: the chunks are
written there, and the commit finishes the stream (fsync, rename into
C{new/}, sync of C{new/}) instead of steps 2 to 4. If the stream's first
write fails (the Maildir cannot be written: a full or read-only mail
disk), nothing is lost yet: the body goes to the queue file after all, and
the queue delivers (or retries, or bounces) as for any queued message.
A later failure discards the stream and fails the commit: the body is
nowhere else, so the client must send it again.

Before step 2, a message whose whole body is still in memory (nothing
written yet: up to L{CHUNK_SIZE}) is offered to the spool's C{on_direct}
hook, the queue manager's direct delivery: if it delivers every recipient
durably, the commit fires with the queue id and nothing is written to the
queue at all; otherwise steps 2 to 5 run with the envelope the hook
returned (the recipients it delivered marked delivered).

Any failure removes whatever was written and fails the L{Deferred} with the
L{OSError}.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.disk import ensure_directory, write_all
from mailappliance.interfaces import IMessageWriter
from mailappliance.queue.envelope import PENDING, Envelope
from mailappliance.queue.layout import encode_tail

if TYPE_CHECKING:
    from mailappliance.queue.spool import Spool

# Body bytes handed to the disk pool per write job (larger chunks measured
# no faster, and each session holds up to HIGH_WATER of them).
CHUNK_SIZE = 128 * 1024
# Backpressure: write() asks the caller to wait when more than this is
# buffered or in flight, and lets it go on when the backlog is down to
# LOW_WATER. Two chunks keep the disk busy while the next one fills (a
# larger backlog measured no faster, and cost 1 MiB of RSS per session
# receiving a large message).
HIGH_WATER = 2 * CHUNK_SIZE
LOW_WATER = CHUNK_SIZE

BODY_MODE = 0o600

_OPEN = "open"
_COMMITTING = "committing"
_ABORTED = "aborted"
_DONE = "done"


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@implementer(IMessageWriter)
class SpoolWriter:
    """
    One message being received into a L{Spool}.

    Blocking work happens only in the spool's disk pool. The body file
    descriptor is used only by pool jobs, and at most one job of a writer
    runs at a time, so it needs no lock.

    @ivar queue_id: the message's queue id, known from the start.
    @ivar size: body bytes given to L{write} so far.
    """

    def __init__(self, spool: Spool, queue_id: str, expected: tuple[Any, tuple] | None = None) -> None:
        """
        @param expected: the envelope's sender and recipients, when known
            before the body (SMTP knows them at DATA): a body too large to
            hold in memory may then be written straight into its Maildir
            (the spool's C{on_stream} hook).
        """
        self.queue_id = queue_id
        self.size = 0
        self._spool = spool
        self._disk = spool.disk
        self._tmp_body = os.path.join(spool.tmp_dir, queue_id)
        self._body = spool.body_path(queue_id)
        self._state = _OPEN
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._chunks: deque[bytes] = deque()
        # Bytes buffered, handed off or being written: what memory holds.
        self._outstanding = 0
        self._writing = False
        self._fd: int | None = None
        self._error: Failure | None = None
        self._drain_waiters: list[Deferred] = []
        self._idle_waiters: list[Deferred] = []
        self._discarded: Deferred | None = None
        self._expected = expected
        # Decided at the first hand-off: None (not yet), False (the queue
        # file), or the stream the body is written to instead.
        self._stream: Any = None
        # Bytes the stream has taken (for the fall-back to the queue file
        # when its first write fails).
        self._streamed = 0

    @property
    def outstanding(self) -> int:
        """
        Bytes held in memory for this message (buffered or being written).
        """
        return self._outstanding

    def write(self, data: bytes) -> Deferred | None:
        """
        Append bytes to the body. See L{IMessageWriter.write}.

        After L{abort}, or once a disk write has failed, data is counted in
        L{size} but discarded (the failure is reported by L{commit}).

        @return: L{None}, or a L{Deferred} firing with L{None} when the
            backlog has drained enough for the caller to go on.
        @raise RuntimeError: if L{commit} was called.
        """
        if self._state in (_COMMITTING, _DONE):
            raise RuntimeError(f"write after commit of {self.queue_id}")
        self.size += len(data)
        if self._state == _ABORTED or self._error is not None or not data:
            return None
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        self._outstanding += len(data)
        if self._buffered >= CHUNK_SIZE:
            self._hand_off()
        if self._outstanding > HIGH_WATER:
            waiter: Deferred = Deferred()
            self._drain_waiters.append(waiter)
            return waiter
        return None

    def commit(self, envelope: Envelope) -> Deferred:
        """
        Make the message durable. See L{IMessageWriter.commit}.

        @param envelope: the envelope; its C{queue_id} and C{size} are set
            to this writer's L{queue_id} and L{size} (the size must be the
            body size, and only the writer knows it for certain).
        @return: a L{Deferred} firing with the queue id once body,
            envelope and directory are durable, or failing with the
            L{OSError} with nothing left behind.
        @raise RuntimeError: if L{commit} or L{abort} was called before.
        """
        if self._state != _OPEN:
            raise RuntimeError(f"commit of {self.queue_id} in state {self._state}")
        self._state = _COMMITTING
        envelope = envelope.replace(queue_id=self.queue_id, size=self.size)
        # The bytes still buffered go with the commit job when no write is
        # in flight (a small message: the whole body), saving a round trip
        # through the disk pool; otherwise they are written in order first.
        tail = b""
        if self._buffer:
            if self._writing or self._chunks:
                self._hand_off()
            else:
                tail = b"".join(self._buffer)
                self._buffer = []
                self._buffered = 0
        if self._stream:
            return self._commit_streamed(envelope, tail)
        if self._fd is None and not self._writing and not self._chunks and self._error is None:
            # The whole body is in `tail`: it may be delivered directly.
            direct = self._deliver_direct(envelope, tail)
            if direct is not None:
                return direct
        return self._commit_queued(envelope, tail)

    def _deliver_direct(self, envelope: Envelope, body: bytes) -> Deferred | None:
        # The spool's on_direct hook (the queue manager) delivers what it
        # can; a message it delivered to every recipient is done, anything
        # else is queued with the outcomes so far.
        hook = self._spool.on_direct
        if hook is None:
            return None
        # Taken now: a stop in the meantime unsets the spool's hooks, and
        # copies delivered now must still be taken back if the commit fails.
        withdraw = self._spool.on_withdraw
        try:
            d = hook(envelope, body)
        except Exception:  # noqa: BLE001 -- a consumer bug must not lose the message: queue it
            self._spool._direct_failed(self.queue_id, Failure())
            return None
        if d is None:
            return None

        def failed(reason: Failure) -> Envelope:
            self._spool._direct_failed(self.queue_id, reason)
            return envelope

        def outcome(delivered: Envelope) -> Any:
            if not delivered.done:
                queued = self._commit_queued(delivered, body)
                if delivered != envelope:
                    # Some copies are in their Maildirs: if the message is
                    # refused now, the client's next attempt must not
                    # deliver them twice.
                    queued.addErrback(self._withdraw_direct, withdraw)
                return queued
            self._state = _DONE
            self._outstanding -= len(body)
            self._spool._writer_finished(self.queue_id)
            return self.queue_id

        d.addErrback(failed)
        d.addCallback(outcome)
        return d

    def _withdraw_direct(self, reason: Failure, hook: Any) -> Deferred:
        # The queue commit after a partial direct delivery failed: have the
        # copies taken back, then fail as the commit did.
        if hook is None:
            return fail(reason)
        withdrawing = maybeDeferred(hook, self.queue_id)
        withdrawing.addErrback(lambda f: self._spool._withdraw_failed(self.queue_id, f))
        withdrawing.addCallback(lambda _: reason)
        return withdrawing

    def _commit_streamed(self, envelope: Envelope, tail: bytes) -> Deferred:
        # The body went to a Maildir stream: finish it (fsync, rename into
        # new/, sync new/), then tell the spool's on_streamed hook. The
        # envelope must be the one the stream was opened for.
        stream = self._stream
        if tail:
            self._chunks.append(tail)
            self._pump()
        d = self._when_idle()

        def route(_: object) -> Deferred:
            if not self._stream:
                # The stream's first write failed meanwhile: the body is in
                # the queue file (see _written).
                return self._commit_queued(envelope, b"")
            return self._finish_stream(envelope, stream)

        d.addCallback(route)
        return d

    def _finish_stream(self, envelope: Envelope, stream: Any) -> Deferred:
        def finish(_: object) -> Deferred:
            if self._error is not None:
                return fail(self._error)
            if not all(r.local and r.state == PENDING and r.target.key == stream.mailbox.key
                       for r in envelope.recipients) or not envelope.recipients:
                return fail(RuntimeError(f"{self.queue_id}: recipients changed after the body began"))
            return self._disk.run(stream.finish_blocking)

        def done(final: str) -> str:
            self._state = _DONE
            self._spool._writer_finished(self.queue_id)
            self._spool._streamed(envelope, final)
            return self.queue_id

        d = succeed(None)
        d.addCallback(finish)
        d.addErrback(self._discard_then_fail)
        d.addCallback(stream.published)
        d.addCallbacks(done, self._give_up)
        return d

    def _commit_queued(self, envelope: Envelope, tail: bytes) -> Deferred:
        # Steps 1 to 5 of the module docstring; `tail` is the body not yet
        # handed to the disk pool.
        d = self._when_idle()

        def finish(_: object) -> Deferred:
            if self._error is not None:
                return fail(self._error)
            finishing = self._disk.run(self._finish_blocking, encode_tail(envelope), tail)
            finishing.addBoth(self._tail_written, len(tail))
            return finishing

        def sync_directory(_: object) -> Deferred:
            syncing = self._spool.syncer.sync(self._spool.messages_dir)
            syncing.addErrback(self._unpublish)
            return syncing

        def done(_: object) -> str:
            self._state = _DONE
            self._spool._writer_finished(self.queue_id)
            self._spool._committed(envelope)
            return self.queue_id

        d.addCallback(finish)
        d.addCallback(sync_directory)
        d.addErrback(self._discard_then_fail)
        d.addCallbacks(done, self._give_up)
        return d

    def _discard_then_fail(self, reason: Failure) -> Deferred:
        # Remove whatever was written (queue file or stream), then fail.
        cleaning = self._disk.run(self._discard_blocking)
        cleaning.addErrback(lambda _: None)
        cleaning.addCallback(lambda _: reason)
        return cleaning

    def _give_up(self, reason: Failure) -> Failure:
        self._state = _DONE
        self._spool._writer_finished(self.queue_id)
        self._spool._commit_failed(self.queue_id, reason)
        return reason

    def abort(self) -> None:
        """
        Discard the message. See L{IMessageWriter.abort}.

        The body file is removed in the disk pool, after any write in
        flight has finished. Once L{commit} has been called, the commit
        runs to its end and C{abort} does nothing: half-undoing the renames
        of a commit would be worse than a duplicate (RFC 5321 section
        6.1 accepts duplicates, never losses).
        """
        if self._state != _OPEN:
            return
        self._state = _ABORTED
        self._buffer = []
        self._buffered = 0
        self._outstanding -= sum(len(c) for c in self._chunks)
        self._chunks.clear()
        self._outstanding = max(self._outstanding, 0)
        self._release_drain_waiters()
        if not self._writing:
            self._discard()

    # -- writing ---------------------------------------------------------

    def _hand_off(self) -> None:
        if self._stream is None:
            self._stream = self._open_stream() or False
        chunk = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        self._chunks.append(chunk)
        self._pump()

    def _open_stream(self) -> Any:
        # The body will not fit in memory: may it go straight to a Maildir?
        hook = self._spool.on_stream
        if hook is None or self._expected is None:
            return None
        try:
            return hook(*self._expected)
        except Exception:  # noqa: BLE001 -- a consumer bug must not lose the message: queue it
            self._spool._direct_failed(self.queue_id, Failure())
            return None

    def _pump(self) -> None:
        if self._writing or not self._chunks:
            return
        chunk = self._chunks.popleft()
        self._writing = True
        self._disk.run(self._write_blocking, chunk).addBoth(self._written, chunk)

    def _written(self, result: Any, chunk: bytes) -> None:
        self._writing = False
        if self._stream and not isinstance(result, Failure):
            self._streamed += len(chunk)
        elif self._stream and self._streamed == 0 and self._state != _ABORTED:
            # The Maildir took nothing: write the body to the queue file
            # instead (this chunk first), and let the queue deliver it.
            stream, self._stream = self._stream, False
            self._disk.run(stream.discard_blocking).addErrback(lambda _: None)
            self._spool._stream_fell_back(self.queue_id, result)
            self._chunks.appendleft(chunk)
            self._pump()
            return
        self._outstanding -= len(chunk)
        if isinstance(result, Failure) and self._error is None:
            self._error = result
            # Nothing more will be written: free the memory now.
            self._outstanding -= self._buffered + sum(len(c) for c in self._chunks)
            self._buffer = []
            self._buffered = 0
            self._chunks.clear()
        if self._state == _ABORTED:
            self._discard()
            return
        self._pump()
        if self._outstanding <= LOW_WATER or self._error is not None:
            self._release_drain_waiters()
        if not self._writing and not self._chunks:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _tail_written(self, result: Any, length: int) -> Any:
        self._outstanding -= length
        return result

    def _release_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _when_idle(self) -> Deferred:
        if not self._writing and not self._chunks:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _discard(self) -> None:
        if self._discarded is not None:
            return
        self._discarded = self._disk.run(self._discard_blocking)

        def finished(result: Any) -> None:
            self._spool._writer_finished(self.queue_id)
            if isinstance(result, Failure):
                self._spool._discard_failed(self.queue_id, result)

        self._discarded.addBoth(finished)

    def _unpublish(self, reason: Failure) -> Deferred:
        # The directory fsync failed: the message may not survive a crash,
        # so it was not accepted; take it back out of messages/.
        d = self._disk.run(_unlink_quietly, self._body)
        d.addErrback(lambda _: None)
        d.addCallback(lambda _: reason)
        return d

    # -- blocking, in the disk pool --------------------------------------

    def _open_blocking(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return os.open(self._tmp_body, flags, BODY_MODE)
        except FileNotFoundError:
            # The folders are made by recovery; a message may arrive first.
            ensure_directory(self._spool.tmp_dir)
            ensure_directory(self._spool.messages_dir)
            return os.open(self._tmp_body, flags, BODY_MODE)

    def _write_blocking(self, chunk: bytes) -> None:
        if self._stream:
            self._stream.write_blocking(chunk)
            return
        if self._fd is None:
            self._fd = self._open_blocking()
        write_all(self._fd, chunk)

    def _finish_blocking(self, envelope_tail: bytes, tail: bytes = b"") -> None:
        # envelope_tail: the envelope and its trailer (layout.encode_tail);
        # tail: body bytes still buffered, written in the same call.
        try:
            if self._fd is None:
                self._fd = self._open_blocking()
            write_all(self._fd, tail + envelope_tail if tail else envelope_tail)
            os.fsync(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
            os.rename(self._tmp_body, self._body)
        except BaseException:
            self._discard_blocking()
            raise

    def _discard_blocking(self) -> None:
        if self._stream:
            self._stream.discard_blocking()
            return
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise
        # Only this writer makes these files (no .env: that is update()'s).
        _unlink_quietly(self._body)
        _unlink_quietly(self._tmp_body)
