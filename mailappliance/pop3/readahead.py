# -*- test-case-name: tests.test_pop3_readahead -*-
"""
Reading the messages of a POP3 session ahead of the commands that want
them.

Every RETR or TOP needs the start of its message: one disk job opens the
file, reads its first chunk and, for a message that fits in it (nearly
all mail), closes it again (L{mailappliance.pop3.mailbox.read_message_start}).
Made when the command arrives, that job is on the critical path of every
command: a hand-off to a disk thread and back (a futex wake-up, a write to
the reactor's waker, GIL transfers) before the first byte of the answer.
Clients download in order (RETR 1, RETR 2, ...; TOP n 0 for every n), so
once a message is sent, L{MessageReader} reads the starts of the
following messages, several per disk job
(L{mailappliance.pop3.mailbox.read_message_starts}), while the answer
travels; when the guess is right the next answers go out without waiting
for the disk, and many messages share one hand-off.

Memory stays bounded whatever the message sizes: what is held ahead is at
most L{READ_AHEAD_BYTES} of starts (a message's start is at most one
chunk, L{mailappliance.pop3.transfer.READ_CHUNK}) and
L{READ_AHEAD_MESSAGES} messages; a larger message keeps its file open and
its rest is streamed only when asked for, so at most a few files are open
per session. A wrong guess costs the reads made and is dropped (open files
closed) at the next command that wants another message.

Message files never change once delivered (readers only rename or remove
them), so a start read ahead is what a read at command time would give,
or the message as it was just before another reader removed it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from mailappliance.pop3.mailbox import (
    MessageInfo,
    MessageStart,
    read_message_start,
    read_message_starts,
)
from mailappliance.pop3.transfer import READ_CHUNK

# The most message starts held ahead per session, in bytes and in messages.
READ_AHEAD_BYTES = 128 * 1024
READ_AHEAD_MESSAGES = 32


class _NotHeld:
    def __repr__(self) -> str:
        return "NOT_HELD"


NOT_HELD = _NotHeld()
"""What L{MessageReader.take} returns for a message not read ahead."""


def first_read_size(message: MessageInfo, chunk_size: int = READ_CHUNK) -> int:
    """
    @return: how much the first read takes of a message: one byte more
        than its size as sent (which is never less than the file's size),
        so that a short read tells the file ended; at most C{chunk_size}.
    """
    return min(message.size + 1, chunk_size)


class _Batch:
    """
    One disk job reading message starts ahead.

    @ivar indexes: the snapshot indexes it reads, ascending.
    @ivar sizes: the bytes asked for each.
    @ivar waiter: the L{Deferred} of a command that wants one of them
        (C{waiter_index}) before the job has returned.
    @ivar dropped: set when its starts are no longer wanted: they are
        disposed of as they arrive (except the waiter's).
    """

    __slots__ = ("dropped", "indexes", "sizes", "waiter", "waiter_index")

    def __init__(self, indexes: list[int], sizes: list[int]) -> None:
        self.indexes = indexes
        self.sizes = sizes
        self.waiter: Deferred | None = None
        self.waiter_index = -1
        self.dropped = False


class MessageReader:
    """
    Reads message starts for one session, in the disk pool, with a bounded
    window read ahead.

    L{read} serves a command; L{read_ahead} guesses the next ones; L{close}
    (at the end of the session) drops whatever is held. Every file opened
    is closed, in the disk pool, whatever happens. At most one read-ahead
    job runs at a time.
    """

    def __init__(
        self,
        disk: Any,
        mailbox: str,
        chunk_size: int = READ_CHUNK,
        window_bytes: int = READ_AHEAD_BYTES,
        window_messages: int = READ_AHEAD_MESSAGES,
    ) -> None:
        """
        @param disk: the disk pool (C{run(f, *args) -> Deferred}).
        @param mailbox: the Maildir folder.
        @param chunk_size: the most bytes a first read takes.
        @param window_bytes: the most bytes of starts held ahead (asked
            for, so a little more than read).
        @param window_messages: the most messages held ahead.
        """
        self._disk = disk
        self._mailbox = mailbox
        self._chunk_size = chunk_size
        self._window_bytes = window_bytes
        self._window_messages = window_messages
        # index -> (start, None or OSError; bytes asked for it)
        self._held: dict[int, tuple[Any, int]] = {}
        self._held_bytes = 0
        self._batch: _Batch | None = None
        self._closed = False

    @property
    def ahead(self) -> list[int]:
        """
        The indexes of the messages held or being read ahead, ascending.
        """
        reading = self._batch.indexes if self._batch is not None else []
        return sorted(self._held) + reading

    def take(self, index: int) -> Any:
        """
        The start of a message if it has been read ahead and has arrived,
        without a L{Deferred} (the common case of a client downloading in
        order costs no callback chain).

        @param index: the message's index in the snapshot.
        @return: the L{MessageStart} (the caller then owns its open file,
            if any), L{None} if the message no longer exists, the
            L{OSError} its read raised, or L{NOT_HELD} if it is not held:
            then call L{read}. Held messages before it are dropped.
        """
        held = self._held.pop(index, None)
        if held is None:
            return NOT_HELD
        outcome, size = held
        self._held_bytes -= size
        self._drop_held_before(index)
        return outcome

    def read(self, index: int, message: MessageInfo) -> Deferred:
        """
        The start of a message, for a command: the one read ahead if it is
        this message, else a new read (and whatever was read ahead is
        dropped: the guess was wrong).

        @param index: the message's index in the snapshot.
        @param message: the message.
        @return: a L{Deferred} firing with the L{MessageStart} (the caller
            then owns its open file, if any) or L{None} if the message no
            longer exists; failing with the L{OSError} of the read.
        """
        outcome = self.take(index)
        if outcome is not NOT_HELD:
            if isinstance(outcome, OSError):
                return fail(outcome)
            return succeed(outcome)
        batch = self._batch
        if batch is not None and index in batch.indexes:
            self._drop_held_before(index)
            batch.waiter = Deferred()
            batch.waiter_index = index
            return batch.waiter
        self._drop_all()
        size = first_read_size(message, self._chunk_size)
        return self._disk.run(read_message_start, self._mailbox, message, size)

    def read_ahead(self, following: Iterable[tuple[int, MessageInfo]]) -> None:
        """
        Make sure the messages the next commands will probably want are
        read or being read: when no read-ahead job is running and less
        than half the window is held, start one for the next messages not
        held, as many as the window has room for (at least one).

        @param following: the messages after the one just sent, in order,
            as C{(index, message)}; only as many are taken as are read.
        """
        if self._closed or self._batch is not None:
            return
        if len(self._held) * 2 >= self._window_messages or self._held_bytes * 2 >= self._window_bytes:
            return
        room_bytes = self._window_bytes - self._held_bytes
        room_messages = self._window_messages - len(self._held)
        last_held = max(self._held, default=-1)
        indexes: list[int] = []
        requests: list[tuple[MessageInfo, int]] = []
        for index, message in following:
            if index <= last_held:
                continue
            size = first_read_size(message, self._chunk_size)
            if requests and (size > room_bytes or len(requests) >= room_messages):
                break
            indexes.append(index)
            requests.append((message, size))
            room_bytes -= size
            if size >= self._chunk_size:
                # It may leave its file open: one per job at most.
                break
        if not requests:
            return
        batch = self._batch = _Batch(indexes, [size for _, size in requests])
        d = self._disk.run(read_message_starts, self._mailbox, requests)
        d.addBoth(self._arrived, batch)

    def close(self) -> None:
        """
        Drop what is read ahead (open files are closed, now or once their
        job returns) and read no more ahead.
        """
        self._closed = True
        self._drop_all()

    def _arrived(self, outcomes: list[Any] | Failure, batch: _Batch) -> None:
        if self._batch is batch:
            self._batch = None
        if isinstance(outcomes, Failure):
            # The job itself failed (per-message errors are in the list): a
            # waiting command gets the error; the guesses are forgotten.
            if batch.waiter is not None:
                batch.waiter.errback(outcomes)
            return
        wanted: Any = None
        for index, size, outcome in zip(batch.indexes, batch.sizes, outcomes):
            if index == batch.waiter_index:
                wanted = outcome
            elif batch.dropped or index < batch.waiter_index:
                self._dispose(outcome)
            else:
                self._held[index] = (outcome, size)
                self._held_bytes += size
        # Last: the waiter's callbacks send the message and may read ahead
        # again, which must see this job's starts held.
        if batch.waiter is not None:
            if isinstance(wanted, OSError):
                batch.waiter.errback(Failure(wanted))
            else:
                batch.waiter.callback(wanted)

    def _drop_held_before(self, index: int) -> None:
        # The client skipped them: it is unlikely to come back for them.
        for skipped in [i for i in self._held if i < index]:
            outcome, size = self._held.pop(skipped)
            self._held_bytes -= size
            self._dispose(outcome)

    def _drop_all(self) -> None:
        for outcome, _ in self._held.values():
            self._dispose(outcome)
        self._held.clear()
        self._held_bytes = 0
        if self._batch is not None:
            self._batch.dropped = True
            self._batch = None

    def _dispose(self, outcome: Any) -> None:
        if isinstance(outcome, MessageStart) and outcome.rest is not None:
            self._disk.run(outcome.rest.close).addErrback(lambda _: None)
