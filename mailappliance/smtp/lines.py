# -*- test-case-name: tests.test_smtp_lines -*-
"""
The command line reader of the SMTP server: strict CRLF lines with a
length limit that depends on the command.

Only CRLF ends a line (RFC 5321 section 2.3.8). A bare CR is part of the
line, for the command parser to refuse. A bare LF never ends a command
either: taking it for one would let this server split a stream into
commands differently from a server that obeys section 2.3.8 (the root of
SMTP smuggling, CVE-2023-51764 and kin), so no line that ends in a bare LF
is ever acted on. It is not left waiting for a CRLF either, though: a
client that ends its lines with LF alone would then get no reply until the
idle time-out. The line is dropped up to and including the LF and
reported once as L{BARE_LF}, so that the server answers it at once and
stays in step with the client (Postfix's C{smtpd_forbid_bare_newline =
reject} gives the same answer, "bare <LF> received", but then
disconnects). L{CommandLineReader.dropped_prefix} tells the verb of the
dropped line: after BDAT, whose octets follow at once, nothing can stay
in step, and the server closes the session.

A line longer than its limit is not kept: its bytes are dropped as they
arrive, up to its line end, so an endless line costs no memory, and it is
then reported once as L{OVERLONG} (or as L{BARE_LF}, when it ended with a
bare LF), so that the server answers it with one reply and stays in step
with the client.

The reader also holds the bytes that arrive while the server cannot act on
them yet (a pipelined command behind a pending lookup, the body behind the
DATA command): L{take_all} hands them to the DATA reader and L{unread}
gives back what follows the end of the data; L{take} hands a BDAT chunk
(RFC 3030) exactly its count of octets.
"""

from __future__ import annotations

from collections.abc import Callable

# RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets,
# including the CRLF.
MAX_COMMAND_LINE = 512

# MAIL and RCPT carry extension parameters; RFC 5321 section 4.5.3.1.4
# lets each advertised extension raise the limit (RFC 1870 SIZE: 26 more;
# RFC 6152, RFC 6531 likewise). 1024 leaves room for every one we offer.
MAX_MAIL_RCPT_LINE = 1024

# RFC 4954 section 4: an AUTH command with an initial response, and each
# SASL response line, may be up to 12288 octets.
MAX_AUTH_LINE = 12288

# How many leading bytes the limit function is shown: enough for the verb
# and its space ("MAIL ", "RCPT ", "AUTH ").
LIMIT_PREFIX = 5

_CR = 0x0D


class _Overlong:
    def __repr__(self) -> str:
        return "OVERLONG"


OVERLONG = _Overlong()
"""What L{CommandLineReader.next_line} returns for a line over its limit."""


class _BareLF:
    def __repr__(self) -> str:
        return "BARE_LF"


BARE_LF = _BareLF()
"""
What L{CommandLineReader.next_line} returns for a line that ended with a
bare LF (dropped, LF included).
"""


def limit_for_command(prefix: bytes) -> int:
    """
    The length limit of a command line, CRLF included, from its first bytes.

    @param prefix: the first (up to) L{LIMIT_PREFIX} bytes of the line.
    @return: L{MAX_MAIL_RCPT_LINE} for MAIL and RCPT, L{MAX_AUTH_LINE} for
        AUTH, else L{MAX_COMMAND_LINE}.
    """
    verb = prefix[:LIMIT_PREFIX].upper()
    if verb in (b"MAIL ", b"RCPT "):
        return MAX_MAIL_RCPT_LINE
    if verb == b"AUTH ":
        return MAX_AUTH_LINE
    return MAX_COMMAND_LINE


class CommandLineReader:
    """
    Split a byte stream into CRLF-terminated lines, each at most its limit
    long; a line that ends with a bare LF is dropped and reported as
    L{BARE_LF}.

    A line that turns out too long is forgotten at once (only a trailing
    CR is remembered, in case the next bytes begin with LF), so at most one
    limit's worth of a line is ever held, plus whatever complete lines the
    caller has not asked for yet.
    """

    def __init__(self, limit_for: Callable[[bytes], int] = limit_for_command) -> None:
        """
        @param limit_for: called with the first bytes of a line (at most
            L{LIMIT_PREFIX}), returns its limit in octets, CRLF included.
        """
        self._limit_for = limit_for
        self._buffer = bytearray()
        # Inside an over-long line whose bytes are being dropped.
        self._discarding = False
        # The over-long line being dropped has ended: what to report for it
        # (OVERLONG, or BARE_LF when a bare LF ended it), before anything
        # that follows it.
        self._dropped_ended: _Overlong | _BareLF | None = None
        # While discarding: the last byte seen was a CR.
        self._held_cr = False
        self._dropped_prefix = b""

    @property
    def dropped_prefix(self) -> bytes:
        """
        The first (up to) L{LIMIT_PREFIX} bytes of the last line reported
        as L{OVERLONG} or L{BARE_LF}: enough to tell its verb.
        """
        return self._dropped_prefix

    @property
    def buffered(self) -> int:
        """
        The number of bytes held, waiting to be read.
        """
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """
        Add received bytes. Bytes of a line already known to be too long
        are dropped here, up to and including its LF (with a CR before it
        or not).
        """
        if not data:
            return
        if self._discarding:
            newline = data.find(b"\n")
            if newline == -1:
                self._held_cr = data.endswith(b"\r")
                return
            crlf = self._held_cr if newline == 0 else data[newline - 1] == _CR
            self._discarding = False
            self._held_cr = False
            self._dropped_ended = OVERLONG if crlf else BARE_LF
            data = data[newline + 1 :]
        self._buffer += data

    def next_line(self) -> bytes | _Overlong | _BareLF | None:
        """
        @return: the next complete line without its CRLF; L{OVERLONG} for a
            line over its limit (once it has ended); L{BARE_LF} for a line
            that ended with a bare LF; L{None} when no complete line is
            held.
        """
        ended = self._dropped_ended
        if ended is not None:
            self._dropped_ended = None
            return ended
        if self._discarding:
            return None
        newline = self._buffer.find(b"\n")
        if newline == -1:
            limit = self._limit_for(bytes(self._buffer[:LIMIT_PREFIX]))
            # The shortest this line can still be, CRLF included: over the
            # limit already, whatever comes next.
            shortest = len(self._buffer) + (1 if self._buffer.endswith(b"\r") else 2)
            if shortest > limit:
                self._held_cr = self._buffer.endswith(b"\r")
                self._dropped_prefix = bytes(self._buffer[:LIMIT_PREFIX])
                del self._buffer[:]
                self._discarding = True
            return None
        if newline == 0 or self._buffer[newline - 1] != _CR:
            self._dropped_prefix = bytes(self._buffer[: min(newline, LIMIT_PREFIX)])
            del self._buffer[: newline + 1]
            return BARE_LF
        line = bytes(self._buffer[: newline - 1])
        del self._buffer[: newline + 1]
        if len(line) + 2 > self._limit_for(line[:LIMIT_PREFIX]):
            self._dropped_prefix = line[:LIMIT_PREFIX]
            return OVERLONG
        return line

    def take_all(self) -> bytes:
        """
        Remove and return every byte held (the start of a message body).

        @return: the bytes, possibly empty.
        """
        data = bytes(self._buffer)
        del self._buffer[:]
        return data

    def take(self, count: int) -> bytes:
        """
        Remove and return at most C{count} of the bytes held, in one piece
        (the octets of a BDAT chunk: never parsed as lines).

        @param count: the most bytes to return (not negative).
        @return: the bytes, possibly empty.
        """
        if count >= len(self._buffer):
            return self.take_all()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def unread(self, data: bytes) -> None:
        """
        Put bytes back in front of those held (what followed the end of a
        message body, to be read as commands).
        """
        self._buffer[:0] = data

    def clear(self) -> None:
        """
        Forget everything held, and any over-long line in progress (for
        STARTTLS: RFC 3207 section 4.2, plaintext received before the TLS
        handshake must be discarded).
        """
        del self._buffer[:]
        self._discarding = False
        self._dropped_ended = None
        self._held_cr = False
        self._dropped_prefix = b""
