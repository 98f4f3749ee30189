# -*- test-case-name: tests.test_queue_layout -*-
"""
The queue file of layout version 2 (see L{mailappliance.queue.spool}): one
file, C{messages/<qid>}, holding the body, then the envelope, then a
fixed-size trailer that locates and checks the envelope::

  +-------------------+-----------------------+---------------------------+
  | body              | envelope              | trailer (TRAILER_SIZE=25) |
  | envelope.size     | Envelope.to_bytes()   | b"MAQ2 " + 10 decimal     |
  | bytes, as received| (JSON, n bytes)       | digits of n + b" " + 8    |
  |                   |                       | hex digits of CRC-32 of   |
  |                   |                       | the envelope + b"\\n"     |
  +-------------------+-----------------------+---------------------------+

A reader finds the envelope from the end of the file, so the body needs no
length prefix and can be streamed to the file before the envelope is
known. The body length is the envelope's C{size}; every reader of a body
stops there (L{body_length} of an open file cannot tell it).

A file is classified by L{read_embedded_envelope}:

  - no trailer magic in the last L{TRAILER_SIZE} bytes (shorter file, a
    version-1 body whose envelope never arrived, a foreign file):
    L{NoTrailer};
  - magic present but a malformed trailer, a length that does not fit, a
    CRC mismatch, or a body length (file size - envelope - trailer) that
    differs from the envelope's C{size}: L{CorruptTrailer};
  - an envelope that does not parse: L{EnvelopeFormatError}.

Everything here is blocking: run it in the disk pool (or the command line).
"""

from __future__ import annotations

import os
import zlib

from mailappliance.queue.envelope import Envelope

TRAILER_MAGIC = b"MAQ2 "
# MAGIC, 10 decimal digits of length, space, 8 hex digits of CRC-32, LF.
TRAILER_SIZE = len(TRAILER_MAGIC) + 10 + 1 + 8 + 1
# An envelope longer than this is not one we wrote (10 digits allow more).
MAX_ENVELOPE_SIZE = 64 * 1024 * 1024


class NoTrailer(Exception):
    """
    The file does not end with a version-2 trailer: it is a version-1 body,
    a torn or a foreign file.
    """


class CorruptTrailer(Exception):
    """
    The file ends with a version-2 trailer that does not check out.
    """


def encode_trailer(envelope_bytes: bytes) -> bytes:
    """
    @param envelope_bytes: the envelope as written (L{Envelope.to_bytes}).
    @return: the L{TRAILER_SIZE} bytes that follow it in the file.
    @raise ValueError: if the envelope is too long to be described.
    """
    if len(envelope_bytes) > MAX_ENVELOPE_SIZE:
        raise ValueError(f"envelope of {len(envelope_bytes)} bytes is too long")
    crc = zlib.crc32(envelope_bytes) & 0xFFFFFFFF
    trailer = TRAILER_MAGIC + b"%010d %08x\n" % (len(envelope_bytes), crc)
    assert len(trailer) == TRAILER_SIZE
    return trailer


def encode_tail(envelope: Envelope) -> bytes:
    """
    @return: what follows the body in a version-2 file: the envelope bytes
        and their trailer.
    """
    data = envelope.to_bytes()
    return data + encode_trailer(data)


def decode_trailer(trailer: bytes) -> tuple[int, int]:
    """
    @param trailer: the last L{TRAILER_SIZE} bytes of a file.
    @return: the envelope's length and CRC-32.
    @raise NoTrailer: if the magic is not there.
    @raise CorruptTrailer: if the magic is there but the rest is malformed.
    """
    if len(trailer) != TRAILER_SIZE or not trailer.startswith(TRAILER_MAGIC):
        raise NoTrailer("no queue file trailer")
    fields = trailer[len(TRAILER_MAGIC):]
    length, space, crc, end = fields[:10], fields[10:11], fields[11:19], fields[19:]
    if space != b" " or end != b"\n" or not length.isdigit() or not _is_hex(crc):
        raise CorruptTrailer(f"malformed trailer {trailer!r}")
    return int(length), int(crc, 16)


def _is_hex(data: bytes) -> bool:
    return len(data) == 8 and all(c in b"0123456789abcdef" for c in data)


def read_embedded_envelope(path: str) -> Envelope:
    """
    Read the envelope embedded in a version-2 queue file.

    @param path: the file.
    @return: the L{Envelope}; its C{size} is the body's length.
    @raise NoTrailer: see the module docstring.
    @raise CorruptTrailer: see the module docstring.
    @raise mailappliance.queue.envelope.EnvelopeFormatError: if the
        envelope (whose CRC checked out) does not parse.
    @raise OSError: if the file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        file_size = os.fstat(fd).st_size
        if file_size < TRAILER_SIZE:
            raise NoTrailer("file too short for a trailer")
        length, crc = decode_trailer(os.pread(fd, TRAILER_SIZE, file_size - TRAILER_SIZE))
        if length > MAX_ENVELOPE_SIZE or length > file_size - TRAILER_SIZE:
            raise CorruptTrailer(f"envelope length {length} does not fit in {file_size} bytes")
        start = file_size - TRAILER_SIZE - length
        data = os.pread(fd, length, start)
    finally:
        os.close(fd)
    if len(data) != length or zlib.crc32(data) & 0xFFFFFFFF != crc:
        raise CorruptTrailer("envelope CRC-32 mismatch")
    envelope = Envelope.from_bytes(data)
    if envelope.size != start:
        raise CorruptTrailer(f"body is {start} bytes, the envelope says {envelope.size}")
    return envelope


__all__ = [
    "TRAILER_MAGIC",
    "TRAILER_SIZE",
    "CorruptTrailer",
    "NoTrailer",
    "decode_trailer",
    "encode_tail",
    "encode_trailer",
    "read_embedded_envelope",
]
