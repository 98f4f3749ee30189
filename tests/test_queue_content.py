"""
Tests for L{mailappliance.queue.content}: what a message's octets need of
the next hop, found as they stream.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.queue.content import ContentScan, scan_content
from mailappliance.queue.envelope import (
    CONTENT_7BIT,
    CONTENT_8BIT,
    CONTENT_8BIT_HEADERS,
)

RECEIVED = b"Received: from c ([192.0.2.1])\r\n\tby mx.example.test (mailappliance) with ESMTP id Q1\r\n"

# (message, content)
CASES = [
    (RECEIVED + b"Subject: plain\r\n\r\nplain body\r\n", CONTENT_7BIT),
    (b"", CONTENT_7BIT),
    # 8-bit octets in the body only.
    (RECEIVED + b"Subject: s\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n", CONTENT_8BIT),
    (RECEIVED + b"\r\n\xff", CONTENT_8BIT),
    (b"\r\n\xc3\xa9 body after an empty header section\r\n", CONTENT_8BIT),
    # In the header section (and perhaps the body).
    (RECEIVED + b"Subject: \xc3\xa9t\xc3\xa9\r\n\r\nplain\r\n", CONTENT_8BIT_HEADERS),
    (RECEIVED + b"Subject: \xc3\xa9\r\n\r\n\xc3\xa9\r\n", CONTENT_8BIT_HEADERS),
    ("Received: from c\r\n\tfor <jöran@example.test>; date\r\n\r\nx\r\n".encode(), CONTENT_8BIT_HEADERS),
    # No empty line: all of it counts as the header section.
    (RECEIVED + b"Subject: s\r\nno empty line \xc3\xa9\r\n", CONTENT_8BIT_HEADERS),
    # A CRLF CRLF inside the header section's last line end is the end;
    # a bare "\n\n" or "\r\r" is not.
    (b"A: 1\n\n\xc3\xa9\r\n", CONTENT_8BIT_HEADERS),
    (b"A: 1\r\r\xc3\xa9\r\n", CONTENT_8BIT_HEADERS),
]


def scan(message, cuts=()):
    scanner = ContentScan()
    start = 0
    for cut in (*cuts, len(message)):
        scanner.feed(message[start:cut])
        start = cut
    return scanner.content


class ContentScanTests(SynchronousTestCase):
    def test_cases(self):
        """
        All 7-bit; 8-bit in the body only; 8-bit in the header section
        (up to the first empty line, or all of a message without one).
        """
        for message, content in CASES:
            self.assertEqual(scan(message), content, message)
            self.assertEqual(scan_content(message), content, message)

    def test_every_split(self):
        """
        The same wherever the stream is cut, the empty line that ends the
        header section included, and one octet at a time.
        """
        for message, content in CASES:
            for cut in range(len(message) + 1):
                self.assertEqual(scan(message, (cut,)), content, (message, cut))
            self.assertEqual(scan(message, tuple(range(1, len(message)))), content, message)

    def test_every_pair_of_splits(self):
        """
        Cut twice around the empty line: its four octets in three chunks.
        """
        message = b"Subject: s\r\n\r\n\xc3\xa9\r\n"
        for first in range(8, 16):
            for second in range(first, 16):
                self.assertEqual(scan(message, (first, second)), CONTENT_8BIT, (first, second))

    def test_large_body(self):
        """
        A large message in large chunks: 8-bit octets found anywhere in
        the body, however late.
        """
        chunk = b"0123456789abcde\r\n" * 8000
        scanner = ContentScan()
        scanner.feed(b"Subject: big\r\n\r\n")
        for _ in range(20):
            scanner.feed(chunk)
        self.assertEqual(scanner.content, CONTENT_7BIT)
        scanner.feed(chunk + b"\x80")
        self.assertEqual(scanner.content, CONTENT_8BIT)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=5))
    def test_matches_whole_message(self, data, cuts):
        """
        For any octets and any split, the result is what looking at the
        whole message at once says.
        """
        end = data.find(b"\r\n\r\n")
        if data.startswith(b"\r\n"):
            header = b""
        else:
            header = data if end == -1 else data[:end]
        if not header.isascii():
            expected = CONTENT_8BIT_HEADERS
        elif not data.isascii():
            expected = CONTENT_8BIT
        else:
            expected = CONTENT_7BIT
        points = sorted({c % (len(data) + 1) for c in cuts})
        self.assertEqual(scan(data, tuple(points)), expected)
