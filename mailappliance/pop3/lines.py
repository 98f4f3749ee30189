# -*- test-case-name: tests.test_pop3_lines -*-
"""
The command line reader of the POP3 server: lines with a length limit.

RFC 2449 section 4 limits a command line to 255 octets, CRLF included. A
longer line is not an error of the session: the reader drops its bytes as
they arrive (so an endless line costs no memory) and, once the line ends,
reports it as one L{OVERLONG} item, so the server answers it with one
C{-ERR} and the replies stay in step with the client's commands.

Lines end with CRLF; a bare LF is accepted as a line end too (as most
servers do), and any other byte (NUL, a bare CR, non-UTF-8) is data for the
command parser to judge.
"""

from __future__ import annotations

from collections.abc import Callable

# RFC 2449 section 4: "The maximum length of a command line is 255 octets,
# including the terminating CRLF."
MAX_COMMAND_LINE = 255

# SASL responses (RFC 5034 section 4) are not commands; an AUTH PLAIN
# response carries three strings of up to 255 octets each, base64-encoded.
MAX_SASL_LINE = 4096


class _Overlong:
    def __repr__(self) -> str:
        return "OVERLONG"


OVERLONG = _Overlong()
"""What L{LineReader.next_line} returns for a line over its limit."""


class LineReader:
    """
    Split a byte stream into lines, at most one limit long each.

    @ivar buffered: the number of bytes held, waiting to be read.
    """

    def __init__(self, limit_for: Callable[[bytes], int] = lambda start: MAX_COMMAND_LINE) -> None:
        """
        @param limit_for: called with the first bytes of a line (at most 5;
            fewer if that is all there is), returns the limit for that line
            in octets, line end included. The server uses it to allow
            longer AUTH lines.
        """
        self._limit_for = limit_for
        self._buffer = bytearray()
        self._discarding = False
        self._overlong_ended = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """
        Add received bytes. The bytes of a line already known to be too
        long are dropped here, up to its end.
        """
        if self._discarding:
            newline = data.find(b"\n")
            if newline == -1:
                return
            self._discarding = False
            self._overlong_ended = True
            data = data[newline + 1 :]
        self._buffer += data

    def clear(self) -> None:
        """
        Drop everything buffered, for STLS (RFC 2595 section 4: plaintext
        received after the STLS command must not be used) and for the end
        of the session.
        """
        del self._buffer[:]
        self._discarding = False
        self._overlong_ended = False

    def next_line(self) -> bytes | _Overlong | None:
        """
        @return: the next complete line without its line end; L{OVERLONG}
            for a line over its limit (once it has ended); L{None} when no
            complete line is buffered.
        """
        if self._overlong_ended:
            self._overlong_ended = False
            return OVERLONG
        if not self._buffer:
            # The usual end of a batch of lines: no limit to look up.
            return None
        newline = self._buffer.find(b"\n")
        if newline == -1:
            if len(self._buffer) >= self._limit_for(bytes(self._buffer[:5])):
                # Too long whatever comes next: stop keeping its bytes.
                del self._buffer[:]
                self._discarding = True
            return None
        line = bytes(self._buffer[:newline])
        del self._buffer[: newline + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) + 2 > self._limit_for(line[:5]):
            return OVERLONG
        return line
