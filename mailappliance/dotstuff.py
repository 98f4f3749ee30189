# -*- test-case-name: tests.test_dotstuff -*-
"""
Dot-stuffing ("transparency", RFC 5321 section 4.5.2; RFC 1939 section 3)
of an outgoing CRLF message, as a stateful stream transform.

The sender of a multi-line body doubles the "." that begins a line, so that
no line of the content can read as the lone "." that ends the data. The
transform must know whether a chunk begins a line, which depends on the
chunks before it: twisted.mail stuffs each 16 KiB chunk on its own and so
lets a "." line through whenever it starts the message or a chunk, which
ends the data early and turns the rest of the body into commands (outbound
SMTP smuggling). L{DotStuffer} carries that state across chunks, so its
output is the same however the input is split.

Only CRLF ends a line. Our spool files never hold a bare LF or bare CR (the
server normalises DATA), so a "." after a bare LF is passed unchanged.
"""

from __future__ import annotations

CRLF = b"\r\n"

# A "." at the start of a line, and what it becomes on the wire.
_LINE_DOT = b"\r\n."
_STUFFED_LINE_DOT = b"\r\n.."

# What ends the data after content that did, or did not, end with CRLF.
END_AFTER_LINE = b".\r\n"
END_AFTER_PARTIAL_LINE = b"\r\n.\r\n"


class DotStuffer:
    """
    Dot-stuff a message given in chunks.

    Feed the message with L{feed}, in chunks of any size (empty ones
    included), and send what it returns; then send what L{finish} returns.
    The first byte of the message is at the start of a line.

    The state carried between chunks is whether the output so far ends at
    the start of a line (after CRLF, or nothing yet) or just after a CR
    (whose LF may open the next chunk). The work per chunk is a single
    C{bytes.replace} plus a fix-up of the first two bytes.
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._after_cr = False

    def feed(self, chunk: bytes) -> bytes:
        """
        Stuff the next chunk of the message.

        @param chunk: the next bytes of the message (CRLF line ends).
        @return: the bytes to send for it: C{chunk} with one more "." before
            every "." that begins a line.
        """
        if not chunk:
            return b""
        stuffed = chunk.replace(_LINE_DOT, _STUFFED_LINE_DOT)
        # A line start that the replace cannot see: the "." is the chunk's
        # first byte after a CRLF (or at the very start of the message), or
        # its second byte after an LF that completes a CR ending the last
        # chunk.  Neither overlaps a match inside the chunk.
        if self._at_line_start and chunk[:1] == b".":
            stuffed = b"." + stuffed
        elif self._after_cr and chunk[:2] == b"\n.":
            stuffed = b"\n." + stuffed[1:]
        if len(chunk) >= 2:
            tail = chunk[-2:]
        elif self._after_cr:
            tail = b"\r" + chunk
        else:
            tail = chunk
        self._at_line_start = tail == CRLF
        self._after_cr = tail[-1:] == b"\r"
        return stuffed

    def finish(self) -> bytes:
        """
        End the data.

        @return: C{.CRLF} when the message fed so far ended with CRLF or was
            empty, else C{CRLF.CRLF} (the CRLF ends the last, partial line;
            RFC 5321 section 4.1.1.4 requires the content to end with one).
        """
        if self._at_line_start:
            return END_AFTER_LINE
        return END_AFTER_PARTIAL_LINE
