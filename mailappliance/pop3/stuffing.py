# -*- test-case-name: tests.test_pop3_stuffing -*-
"""
The byte transforms between a Maildir file and a POP3 multi-line response.

A message file holds either CRLF line ends (what we deliver) or bare LF
(what some other programs write). On the wire, RFC 1939 section 3 wants
every line ended by CRLF, every line that begins with "." prefixed with one
more ".", and the response ended by C{.CRLF}. The message as the client
sees it (after undoing the stuffing) is the file with each bare LF turned
into CRLF and, if the file does not end with a line end, a CRLF added: that
is the size that STAT and LIST report (L{wire_size}).

Each transform is a stateful stream transform: C{feed(chunk)} returns the
output for that chunk and carries whatever state the next chunk needs, so
the result is the same whatever the chunk boundaries are. (Both of
Twisted's transformers get that wrong: a "." or a CR LF split across two
chunks escapes them.) L{MessageTransform} chains them for RETR and TOP.
"""

from __future__ import annotations

from collections.abc import Iterable

TERMINATOR = b".\r\n"


class LineEndNormaliser:
    """
    Turn bare LF into CRLF; keep CRLF; pass any other byte (a bare CR
    included) through unchanged. L{finish} adds a final CRLF when the
    output so far does not end with one (a non-empty file without a final
    line end).

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
        prefix = b""
        if self._last_was_cr and data[:1] == b"\n":
            # The CR of this CR LF ended the previous chunk and was already
            # passed through; this LF completes a proper line end.
            prefix = b"\n"
            data = data[1:]
        out = prefix + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if out:
            self._last_was_cr = out[-1:] == b"\r"
            self._last_was_lf = out[-1:] == b"\n"
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
        return b"\r\n"


class DotStuffer:
    """
    Add a "." before every line that begins with "." (RFC 1939 section 3).

    The input must already have CRLF line ends (the output of
    L{LineEndNormaliser}); the stream starts at the beginning of a line.
    """

    def __init__(self) -> None:
        self._at_line_start = True

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next bytes of CRLF-normalised message text.
        @return: the same bytes, dot-stuffed.
        """
        if not data:
            return b""
        out = data.replace(b"\n.", b"\n..")
        if self._at_line_start and data[:1] == b".":
            out = b"." + out
        self._at_line_start = data[-1:] == b"\n"
        return out


class HeaderAndBodyLines:
    """
    Pass the header section, the blank line after it and then at most
    C{body_lines} lines of the body (the TOP command, RFC 1939 section 7);
    drop the rest.

    The input must have CRLF line ends. A message without a blank line is
    all header and passes whole.

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
        if not self._in_header and self._remaining == 0:
            self.complete = True
            return b""
        position = 0
        while True:
            newline = data.find(b"\n", position)
            if newline == -1:
                self._line_length = min(2, self._line_length + len(data) - position)
                return data
            length = self._line_length + newline - position
            self._line_length = 0
            position = newline + 1
            if self._in_header:
                if length == 1:
                    # A line that is just CR LF: the end of the header.
                    self._in_header = False
            else:
                self._remaining -= 1
            if not self._in_header and self._remaining == 0:
                self.complete = True
                return data[:position]


class MessageTransform:
    """
    The whole file-to-wire transform of a RETR or TOP response body:
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

    def _pass(self, data: bytes) -> bytes:
        if self._top is not None:
            data = self._top.feed(data)
        return self._stuffer.feed(data)

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next bytes of the file.
        @return: the bytes to send for them.
        """
        return self._pass(self._normaliser.feed(data))

    def finish(self) -> bytes:
        """
        @return: the last bytes to send: a CRLF if the text did not end
            with one, then the terminating C{.CRLF}.
        """
        return self._pass(self._normaliser.finish()) + TERMINATOR


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
