# -*- test-case-name: tests.test_queue_ids -*-
"""
Queue ids: the name of a queued message, in file names and in every log line
about it.

A queue id is 16 characters of Crockford's base32 alphabet (digits and
upper-case letters without I, L, O and U), encoding 80 bits, most
significant first::

  45 bits  milliseconds since the Unix epoch (good until the year 3084)
  10 bits  a counter, for ids made within the same millisecond
  25 bits  random

So ids are:

  - sortable by time: the alphabet is in ASCII order and the width is
    fixed, so string order is numeric order; within one process ids are
    strictly increasing even if the clock steps back (the last time is
    kept and the counter carries into it);
  - unique across restarts: two processes would have to pick the same
    millisecond, counter and 25 random bits;
  - safe in a file name, a log line and a shell command: no separator, no
    space, no punctuation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

QUEUE_ID_LENGTH = 16
TIME_BITS = 45
COUNTER_BITS = 10
RANDOM_BITS = 25

# Random bytes drawn from the operating system at a time: one getrandom()
# call per this many bytes instead of one per id (a system call on the
# reactor thread, and a GIL hand-off to any waiting disk thread, per
# message).
RANDOM_BATCH_BYTES = 4096

# Crockford's base32: no I, L, O, U, so ids cannot be misread or spell words.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_QUEUE_ID = re.compile(rf"[{ALPHABET}]{{{QUEUE_ID_LENGTH}}}\Z")


def is_queue_id(text: str) -> bool:
    """
    @param text: anything, for example a command-line argument.
    @return: whether C{text} has the form of a queue id, so it can be used
        as a file name in the queue without further checks.
    """
    return isinstance(text, str) and _QUEUE_ID.match(text) is not None


def encode_queue_id(value: int) -> str:
    """
    Write an 80-bit number as a queue id.

    @param value: 0 <= value < 2 ** 80.
    @return: the 16-character id.
    @raise ValueError: if C{value} is out of range.
    """
    if not 0 <= value < 1 << (5 * QUEUE_ID_LENGTH):
        raise ValueError("queue id value out of range")
    digits = []
    for _ in range(QUEUE_ID_LENGTH):
        digits.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(digits))


class BulkRandomBits:
    """
    Random integers of up to 32 bits, cut from a buffer of
    L{RANDOM_BATCH_BYTES} bytes of C{os.urandom} that is refilled when
    used up. Not thread-safe: one generator, one thread (the reactor's).
    """

    def __init__(self, source: Callable[[int], bytes] = os.urandom, batch: int = RANDOM_BATCH_BYTES) -> None:
        """
        @param source: C{f(n)} returning C{n} random bytes.
        @param batch: bytes drawn at a time; a multiple of 4.
        """
        self._source = source
        self._batch = batch
        self._buffer = b""
        self._offset = 0

    def __call__(self, bits: int) -> int:
        """
        @param bits: 0 to 32.
        @return: an integer of C{bits} random bits.
        @raise ValueError: for more than 32 bits.
        """
        if not 0 <= bits <= 32:
            raise ValueError("at most 32 random bits at a time")
        if self._offset + 4 > len(self._buffer):
            self._buffer = self._source(self._batch)
            self._offset = 0
        word = int.from_bytes(self._buffer[self._offset : self._offset + 4], "big")
        self._offset += 4
        return word >> (32 - bits)


class QueueIdGenerator:
    """
    Makes queue ids for one process.

    @ivar clock: provides C{seconds()} (the reactor, or a L{task.Clock}).
    """

    def __init__(self, clock: Any, random_bits: Callable[[int], int] | None = None) -> None:
        """
        @param clock: provides C{seconds()}, Unix time.
        @param random_bits: C{f(n)} returning an integer of C{n} random bits;
            tests pass a predictable one. By default a L{BulkRandomBits}
            of its own.
        """
        self.clock = clock
        self._random_bits = random_bits if random_bits is not None else BulkRandomBits()
        self._last_ms = -1
        self._counter = 0

    def next_id(self) -> str:
        """
        @return: a new queue id, greater than every id this generator made
            before.
        """
        now_ms = max(int(self.clock.seconds() * 1000), 0)
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._counter = 0
        else:
            # Same millisecond, or the clock stepped back: stay monotonic.
            self._counter += 1
            if self._counter >= 1 << COUNTER_BITS:
                self._last_ms += 1
                self._counter = 0
        time_part = self._last_ms & ((1 << TIME_BITS) - 1)
        value = (
            (time_part << (COUNTER_BITS + RANDOM_BITS))
            | (self._counter << RANDOM_BITS)
            | self._random_bits(RANDOM_BITS)
        )
        return encode_queue_id(value)
