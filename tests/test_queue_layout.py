# -*- test-case-name: tests.test_queue_layout -*-
"""
Tests for L{mailappliance.queue.layout}: the trailer of a queue file of
layout version 2 and reading the envelope from the end of the file.
"""

import os
import zlib

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.queue.envelope import EnvelopeFormatError
from mailappliance.queue.layout import (
    TRAILER_SIZE,
    CorruptTrailer,
    NoTrailer,
    decode_trailer,
    encode_tail,
    encode_trailer,
    read_embedded_envelope,
)
from tests.test_queue_writer import make_envelope

QID = "0000000000000AAA"
BODY = b"Received: from x\r\n\r\nbody\r\n"


class TrailerTests(SynchronousTestCase):
    def test_exact_bytes(self):
        """
        The trailer is C{MAQ2 }, the envelope's length in 10 decimal
        digits, a space, its CRC-32 in 8 lower-case hex digits, and LF.
        """
        data = b'{"version": 1}'
        crc = zlib.crc32(data)
        self.assertEqual(encode_trailer(data), b"MAQ2 0000000014 %08x\n" % (crc,))
        self.assertEqual(len(encode_trailer(data)), TRAILER_SIZE)
        self.assertEqual(TRAILER_SIZE, 25)

    def test_round_trip(self):
        """
        L{decode_trailer} gives back the length and CRC L{encode_trailer}
        wrote.
        """
        for data in [b"", b"x", b"{}" * 5000]:
            self.assertEqual(decode_trailer(encode_trailer(data)), (len(data), zlib.crc32(data)))

    def test_no_magic(self):
        """
        Bytes without the magic (a body's last line) are L{NoTrailer}.
        """
        self.assertRaises(NoTrailer, decode_trailer, b"x" * TRAILER_SIZE)
        self.assertRaises(NoTrailer, decode_trailer, b"MAQ2 short")

    def test_malformed(self):
        """
        The magic followed by anything but the fields is L{CorruptTrailer}.
        """
        good = encode_trailer(b"abc")
        for bad in [good[:-1] + b"\r", b"MAQ2 00000000x3 " + good[16:], good[:15] + b"-" + good[16:],
                    good[:16] + b"ABCDEF01\n"]:
            self.assertRaises(CorruptTrailer, decode_trailer, bad)


class ReadEmbeddedTests(SynchronousTestCase):
    def write(self, data):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_round_trip(self):
        """
        A file of body, envelope and trailer gives back the envelope.
        """
        envelope = make_envelope(queue_id=QID, size=len(BODY))
        self.assertEqual(read_embedded_envelope(self.write(BODY + encode_tail(envelope))), envelope)

    def test_empty_body(self):
        """
        An empty body is fine: the envelope starts the file.
        """
        envelope = make_envelope(queue_id=QID, size=0)
        self.assertEqual(read_embedded_envelope(self.write(encode_tail(envelope))), envelope)

    def test_foreign_file(self):
        """
        A file that is not a queue file (a version-1 body, an empty file,
        anything shorter than a trailer) is L{NoTrailer}.
        """
        for data in [BODY, b"", b"MAQ2", b"x" * 1000]:
            self.assertRaises(NoTrailer, read_embedded_envelope, self.write(data))

    def test_torn_file(self):
        """
        A queue file cut short anywhere has lost its trailer: L{NoTrailer}
        (or L{CorruptTrailer} if the cut leaves trailer-like bytes); never
        an envelope.
        """
        data = BODY + encode_tail(make_envelope(queue_id=QID, size=len(BODY)))
        for cut in range(len(data)):
            path = self.write(data[:cut])
            self.assertRaises((NoTrailer, CorruptTrailer), read_embedded_envelope, path)

    def test_crc_mismatch(self):
        """
        A flipped byte in the envelope fails the CRC: L{CorruptTrailer}.
        """
        tail = bytearray(encode_tail(make_envelope(queue_id=QID, size=len(BODY))))
        tail[5] ^= 0x01
        error = self.assertRaises(CorruptTrailer, read_embedded_envelope, self.write(BODY + bytes(tail)))
        self.assertEqual(str(error), "envelope CRC-32 mismatch")

    def test_length_too_large(self):
        """
        A trailer claiming more envelope than the file holds is
        L{CorruptTrailer}.
        """
        error = self.assertRaises(CorruptTrailer, read_embedded_envelope,
                                  self.write(b"ab" + encode_trailer(b"abc")[:-1] + b"\n"))
        self.assertIn("does not fit", str(error))
        self.assertRaises(CorruptTrailer, read_embedded_envelope, self.write(b"MAQ2 0000000099 00000000\n"))

    def test_size_mismatch(self):
        """
        An envelope whose C{size} is not the length of what precedes it is
        L{CorruptTrailer}: a reader would cut the body in the wrong place.
        """
        envelope = make_envelope(queue_id=QID, size=len(BODY) + 1)
        error = self.assertRaises(CorruptTrailer, read_embedded_envelope, self.write(BODY + encode_tail(envelope)))
        self.assertEqual(str(error), f"body is {len(BODY)} bytes, the envelope says {len(BODY) + 1}")

    def test_unparsable_envelope(self):
        """
        Bytes whose CRC checks out but that are not an envelope raise
        L{EnvelopeFormatError}.
        """
        data = b"not json"
        self.assertRaises(EnvelopeFormatError, read_embedded_envelope, self.write(BODY + data + encode_trailer(data)))

    def test_missing(self):
        """
        A missing file raises L{FileNotFoundError}.
        """
        self.assertRaises(FileNotFoundError, read_embedded_envelope, os.path.join(self.mktemp(), "nothing"))
