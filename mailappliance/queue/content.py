# -*- test-case-name: tests.test_queue_content -*-
"""
What a message's octets need of the next hop, found while it is received.

A message with an octet above 127 needs a server that offers 8BITMIME (RFC
6152 section 3); one with such octets in its header section (UTF-8 header
fields, RFC 6532) needs SMTPUTF8 as well (RFC 6531 section 3.4). What the
client declared (C{BODY=8BITMIME}, C{SMTPUTF8}) is only what it may send:
plenty of clients declare 8BITMIME for every message. The relay decides on
what the message holds, and that is learnt here, from the bytes as they
are written to the spool, so the relay never has to read a queued body to
find out (and nothing rescans it on the reactor thread).

L{ContentScan} looks at each chunk with C{bytes.isascii} and, until the
header section has ended, C{bytes.find} for its end: no Python work per
line or per byte. The header section is taken to end at the first empty
line (RFC 5322 section 2.1); a message without one is all header section
here. That may count body lines as header lines (a header section that a
line which is no field ends, RFC 5322 section 3.5), never the reverse, so
a message is never sent without SMTPUTF8 when it needs it.
"""

from __future__ import annotations

from mailappliance.queue.envelope import (
    CONTENT_7BIT,
    CONTENT_8BIT,
    CONTENT_8BIT_HEADERS,
)

_EMPTY_LINE = b"\r\n\r\n"
# The line end in front of the first line: a message that starts with an
# empty line has an empty header section.
_VIRTUAL_START = b"\r\n"


class ContentScan:
    """
    Classify a message as its octets stream past: all 7-bit, 8-bit octets
    in the body only, or 8-bit octets in the header section.
    """

    def __init__(self) -> None:
        self._in_header = True
        # The last (up to three) octets of the header section so far: the
        # start of an empty line that the next chunk may finish.
        self._tail = _VIRTUAL_START
        self._header_8bit = False
        self._body_8bit = False

    def feed(self, data: bytes) -> None:
        """
        @param data: the next octets of the message, exactly as stored
            (our own header fields included).
        """
        if not data:
            return
        if self._in_header:
            end = self._header_end(data)
            header = data if end == -1 else data[:end]
            if not self._header_8bit and not header.isascii():
                self._header_8bit = True
            if end == -1:
                self._tail = (self._tail + data[-3:])[-3:]
                return
            self._in_header = False
            data = data[end:]
        if not self._body_8bit and not data.isascii():
            self._body_8bit = True

    def _header_end(self, data: bytes) -> int:
        """
        @return: the offset in C{data} just after the empty line that ends
            the header section, or -1 if it does not end in C{data}.
        """
        # An empty line begun in the chunks before this one.
        joint = (self._tail + data[:3]).find(_EMPTY_LINE)
        if joint != -1:
            return joint + len(_EMPTY_LINE) - len(self._tail)
        found = data.find(_EMPTY_LINE)
        return -1 if found == -1 else found + len(_EMPTY_LINE)

    @property
    def content(self) -> str:
        """
        What the octets fed so far hold: L{CONTENT_7BIT}, L{CONTENT_8BIT}
        (8-bit octets in the body only) or L{CONTENT_8BIT_HEADERS}.
        """
        if self._header_8bit:
            return CONTENT_8BIT_HEADERS
        if self._body_8bit:
            return CONTENT_8BIT
        return CONTENT_7BIT


def scan_content(data: bytes) -> str:
    """
    The L{ContentScan.content} of a whole message held in memory.
    """
    scan = ContentScan()
    scan.feed(data)
    return scan.content
