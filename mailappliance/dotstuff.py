# -*- test-case-name: tests.test_dotstuff -*-
"""
The byte transforms between a stored message and a multi-line body on the
wire: dot-stuffing ("transparency", RFC 5321 section 4.5.2 for outgoing
SMTP DATA; RFC 1939 section 3 for POP3 RETR and TOP), line-end
normalisation, and the TOP cut.

The sender of a multi-line body doubles the "." that begins a line, so that
no line of the content can read as the lone "." that ends the data, and
ends the data with C{.CRLF}. Every transform here is a stateful stream
transform: C{feed(chunk)} returns the output for that chunk and carries
whatever state the next chunk needs, so the result is the same whatever the
chunk boundaries are. (twisted.mail gets this wrong: its SMTP client stuffs
each 16 KiB chunk on its own, and its POP3 transformers let a "." or a CR
LF split across two chunks escape, so a "." line at a chunk boundary ends
the data early: outbound smuggling, or a truncated RETR.)

They are on the hot path of both RETR and relay, so each chunk is handled
with a few C{bytes} methods over the whole chunk (C{replace}, C{count},
C{find}), not with a Python loop over its lines (the one exception: TOP
finds the end of its last wanted line with one C{find} per line it keeps
from the chunk where it stops), and a chunk that needs no change is passed
on as the same object, not copied.

Users:
  - outbound SMTP (L{mailappliance.smtp.client_body}) feeds the spooled
    message, which has CRLF line ends only (the server normalises DATA),
    to L{DotStuffer};
  - POP3 (L{mailappliance.pop3.retrieval}) feeds a Maildir file, which may
    have bare LF line ends (other programs write those), to
    L{MessageTransform}: L{LineEndNormaliser}, for TOP
    L{HeaderAndBodyLines}, then the same L{DotStuffer}. L{wire_size} is
    the size POP3 reports for such a file.
"""

from __future__ import annotations

from collections.abc import Iterable

CRLF = b"\r\n"

# A "." at the start of a line, and what it becomes on the wire.
_LINE_DOT = b"\r\n."
_STUFFED_LINE_DOT = b"\r\n.."

# What ends the data after content that did, or did not, end with CRLF.
END_AFTER_LINE = b".\r\n"
END_AFTER_PARTIAL_LINE = b"\r\n.\r\n"

_CR = 0x0D
_LF = 0x0A


class DotStuffer:
    """
    Dot-stuff a message given in chunks.

    Feed the message with L{feed}, in chunks of any size (empty ones
    included), and send what it returns; then send what L{finish} returns.
    The first byte of the message is at the start of a line.

    Only CRLF ends a line: a "." after a bare LF or a bare CR is passed
    unchanged. (SMTP spool files never hold those; POP3 normalises its
    input with L{LineEndNormaliser} first.)

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
            every "." that begins a line (C{chunk} itself if it has none).
        """
        if not chunk:
            return b""
        stuffed = chunk.replace(_LINE_DOT, _STUFFED_LINE_DOT)
        # A line start that the replace cannot see: the "." is the chunk's
        # first byte after a CRLF (or at the very start of the message), or
        # its second byte after an LF that completes a CR ending the last
        # chunk.  Neither overlaps a match inside the chunk.
        if self._at_line_start and chunk[0] == 0x2E:
            stuffed = b"." + stuffed
        elif self._after_cr and chunk[:2] == b"\n.":
            stuffed = b"\n." + stuffed[1:]
        if len(chunk) >= 2:
            self._at_line_start = chunk[-2] == _CR and chunk[-1] == _LF
        else:
            self._at_line_start = self._after_cr and chunk[0] == _LF
        self._after_cr = chunk[-1] == _CR
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


def _crlf_line_ends(data: bytes) -> bytes:
    """
    @return: C{data} with each bare LF made CRLF; C{data} itself when it
        has none (found by counting, the cheapest test in C{bytes}).
    """
    line_ends = data.count(b"\n")
    if not line_ends:
        return data
    proper = data.count(b"\r\n")
    if proper == line_ends:
        return data
    if not proper:
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class LineEndNormaliser:
    """
    Turn bare LF into CRLF; keep CRLF; pass any other byte (a bare CR
    included) through unchanged. L{finish} adds a final CRLF when the
    output so far does not end with one (a non-empty file without a final
    line end).

    A chunk without a bare LF (all of our own deliveries) is returned as
    it is, after two C{count}s.

    @ivar output_size: the number of bytes produced so far.
    """

    def __init__(self) -> None:
        self._last_was_cr = False
        self._last_was_lf = True
        self.output_size = 0

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next bytes of the file.
        @return: the normalised bytes for them.
        """
        if not data:
            return b""
        if self._last_was_cr and data[0] == _LF:
            # The CR of this CR LF ended the previous chunk and was already
            # passed through; this LF completes a proper line end.
            rest = _crlf_line_ends(data[1:])
            out = data if len(rest) == len(data) - 1 else b"\n" + rest
        else:
            out = _crlf_line_ends(data)
        last = out[-1]
        self._last_was_cr = last == _CR
        self._last_was_lf = last == _LF
        self.output_size += len(out)
        return out

    def finish(self) -> bytes:
        """
        @return: C{b"\\r\\n"} when the output so far is neither empty nor
            ended by a line end, else C{b""}.
        """
        if self._last_was_lf:
            return b""
        self._last_was_lf = True
        self._last_was_cr = False
        self.output_size += 2
        return CRLF


class HeaderAndBodyLines:
    """
    Pass the header section, the blank line after it and then at most
    C{body_lines} lines of the body (the TOP command, RFC 1939 section 7);
    drop the rest.

    The input must have CRLF line ends (the output of
    L{LineEndNormaliser}), so a blank line is exactly an LF with one byte,
    a CR, before it on its line. A message without a blank line is all
    header and passes whole.

    @ivar complete: C{True} once everything TOP wants has passed: any later
        input is dropped, so the caller may stop reading.
    """

    def __init__(self, body_lines: int) -> None:
        self._remaining = body_lines
        self._in_header = True
        # Bytes of the current (unfinished) line seen so far, capped at 2:
        # enough to tell a blank line (exactly CR LF) from any other.
        self._line_length = 0
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next bytes of CRLF-normalised message text.
        @return: the part of them TOP sends.
        """
        if self.complete or not data:
            return b""
        start = 0
        if self._in_header:
            start = self._header_end(data)
            if start < 0:
                return data
            self._in_header = False
        end = self._body_end(data, start)
        return data if end == len(data) else data[:end]

    def _header_end(self, data: bytes) -> int:
        # The end of the blank line in data, or -1 (and the length of the
        # line data leaves unfinished is noted).
        if self._line_length == 1 and data[0] == _LF:
            return 1
        if self._line_length == 0 and data.startswith(CRLF):
            return 2
        blank = data.find(b"\n\r\n")
        if blank >= 0:
            return blank + 3
        last_lf = data.rfind(b"\n")
        if last_lf < 0:
            self._line_length = min(2, self._line_length + len(data))
        else:
            self._line_length = min(2, len(data) - last_lf - 1)
        return -1

    def _body_end(self, data: bytes, start: int) -> int:
        # Where the wanted body lines end in data (from start): len(data)
        # if they go on past it.
        remaining = self._remaining
        if remaining:
            lines = data.count(b"\n", start)
            if lines < remaining:
                self._remaining = remaining - lines
                return len(data)
            for _ in range(remaining):
                start = data.index(b"\n", start) + 1
            self._remaining = 0
        self.complete = True
        return start


class MessageTransform:
    """
    The whole file-to-wire transform of a POP3 RETR or TOP response body:
    line ends normalised, (for TOP) cut after the wanted lines,
    dot-stuffed, ended by C{.CRLF}.
    """

    def __init__(self, body_lines: int | None = None) -> None:
        """
        @param body_lines: for TOP, the number of body lines to send; for
            RETR, L{None} (the whole message).
        """
        self._normaliser = LineEndNormaliser()
        self._top = HeaderAndBodyLines(body_lines) if body_lines is not None else None
        self._stuffer = DotStuffer()

    @property
    def complete(self) -> bool:
        """
        C{True} when no further input can change the output (TOP has all
        its lines), so reading the file may stop early.
        """
        return self._top is not None and self._top.complete

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next bytes of the file.
        @return: the bytes to send for them.
        """
        data = self._normaliser.feed(data)
        if self._top is not None:
            data = self._top.feed(data)
        return self._stuffer.feed(data)

    def finish(self) -> bytes:
        """
        @return: the last bytes to send: a CRLF if the text did not end
            with one, then the terminating C{.CRLF}.
        """
        data = self._normaliser.finish()
        if self._top is not None:
            data = self._top.feed(data)
        # The normaliser ends the text with CRLF (and TOP cuts after one),
        # so this is ".CRLF" after any non-empty text.
        return self._stuffer.feed(data) + self._stuffer.finish()


def wire_size(chunks: Iterable[bytes]) -> int:
    """
    The size of a message as a POP3 client receives it, before
    dot-stuffing: bare LF counted as CRLF, plus a final CRLF if missing
    (RFC 1939 section 11 asks for the "exact size" as sent).

    @param chunks: the file's bytes, in any chunking.
    @return: the size in octets.
    """
    normaliser = LineEndNormaliser()
    for chunk in chunks:
        normaliser.feed(chunk)
    normaliser.finish()
    return normaliser.output_size
