# -*- test-case-name: tests.test_queue_ids -*-
"""
Tests for L{mailappliance.queue.ids}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.queue.ids import (
    QUEUE_ID_LENGTH,
    RANDOM_BITS,
    BulkRandomBits,
    QueueIdGenerator,
    encode_queue_id,
    is_queue_id,
)


class EncodeTests(SynchronousTestCase):
    def test_width_and_alphabet(self):
        """
        Ids are 16 characters of Crockford's base32, zero-padded, most
        significant digit first.
        """
        self.assertEqual(encode_queue_id(0), "0" * 16)
        self.assertEqual(encode_queue_id(31), "0" * 15 + "Z")
        self.assertEqual(encode_queue_id(32), "0" * 14 + "10")
        self.assertEqual(encode_queue_id(2**80 - 1), "Z" * 16)

    def test_out_of_range(self):
        """
        Values that do not fit 80 bits are refused.
        """
        self.assertRaises(ValueError, encode_queue_id, 2**80)
        self.assertRaises(ValueError, encode_queue_id, -1)

    def test_is_queue_id(self):
        """
        Only 16 characters of the alphabet are queue ids; nothing that
        could name another file passes.
        """
        self.assertTrue(is_queue_id("0123456789ABCDEF"))
        for bad in ["", "0123456789ABCDE", "0123456789ABCDEFG", "0123456789ABCDEI", "../../etc/passwd", "0123456789abcdef", "0123456789ABCDE\n", None]:
            self.assertFalse(is_queue_id(bad), bad)


class GeneratorTests(SynchronousTestCase):
    def test_time_prefix(self):
        """
        The leading 45 bits are the time in milliseconds; counter and
        random bits follow.
        """
        clock = Clock()
        clock.advance(1700000000.5)
        generator = QueueIdGenerator(clock, random_bits=lambda n: 5)
        self.assertEqual(generator.next_id(), encode_queue_id((1700000000500 << 35) | 5))
        self.assertEqual(generator.next_id(), encode_queue_id((1700000000500 << 35) | (1 << 25) | 5))

    def test_sortable_and_unique(self):
        """
        Ids from one generator are strictly increasing, within one
        millisecond, across milliseconds, and when the clock steps back.
        """
        clock = Clock()
        clock.advance(1000)
        generator = QueueIdGenerator(clock, random_bits=lambda n: (1 << n) - 1)
        ids = [generator.next_id() for _ in range(2000)]  # counter overflows
        clock.advance(1)
        ids.append(generator.next_id())
        clock.rightNow -= 5  # the clock steps back
        ids.append(generator.next_id())
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), len(ids))
        self.assertTrue(all(len(i) == QUEUE_ID_LENGTH and is_queue_id(i) for i in ids))

    def test_later_is_greater(self):
        """
        An id made later by another generator (another process) sorts after.
        """
        clock = Clock()
        clock.advance(5000)
        first = QueueIdGenerator(clock, random_bits=lambda n: (1 << n) - 1).next_id()
        clock.advance(0.001)
        second = QueueIdGenerator(clock, random_bits=lambda n: 0).next_id()
        self.assertLess(first, second)


class CountingSource:
    """
    A random source that returns predictable bytes and counts its calls.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, n):
        self.calls.append(n)
        start = len(self.calls) * 16
        return bytes((start + i) % 256 for i in range(n))


class BulkRandomBitsTests(SynchronousTestCase):
    def test_one_draw_per_batch(self):
        """
        Random bits are cut from one draw of the batch size, four bytes
        per call (the top C{n} bits of a big-endian word), and drawn
        again only when the batch is used up.
        """
        source = CountingSource()
        bits = BulkRandomBits(source, batch=8)
        self.assertEqual(bits(32), 0x10111213)
        self.assertEqual(bits(8), 0x14)
        self.assertEqual(source.calls, [8])
        self.assertEqual(bits(32), 0x20212223)
        self.assertEqual(source.calls, [8, 8])

    def test_widths(self):
        """
        Results fit the width asked for; zero bits is zero; more than 32
        bits is refused.
        """
        bits = BulkRandomBits(lambda n: b"\xff" * n, batch=8)
        self.assertEqual(bits(RANDOM_BITS), (1 << RANDOM_BITS) - 1)
        self.assertEqual(bits(0), 0)
        self.assertRaises(ValueError, bits, 33)

    def test_generator_default(self):
        """
        By default a generator draws its random bits in bulk: a thousand
        ids take one batch of system randomness, not a thousand, and are
        all different.
        """
        clock = Clock()
        clock.advance(1700000000)
        generator = QueueIdGenerator(clock)
        self.assertIsInstance(generator._random_bits, BulkRandomBits)
        source = CountingSource()
        generator._random_bits = BulkRandomBits(source, batch=4096)
        ids = {generator.next_id() for _ in range(1000)}
        self.assertEqual(len(ids), 1000)
        self.assertEqual(source.calls, [4096])
