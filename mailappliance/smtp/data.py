# -*- test-case-name: tests.test_smtp_data -*-
"""
The DATA reader: turns the bytes a client sends after C{354} into the
message body, in bulk.

RFC 5321 section 4.5.2: the data ends with a line holding a single dot,
that is the five octets CRLF "." CRLF (the CRLF that ends the DATA command
line counts as the first CRLF, so a body consisting of just "." CRLF is
empty); a line that starts with a dot had one more dot put in front by the
client, which is removed here.

Each chunk is scanned with C{bytes.find}, C{count} and C{replace} (no
Python work per line), so the reader runs at memory speed whatever the
line lengths. The only state carried from one chunk to the next is a tail
of at most four bytes that might be the start of the end marker.

SMTP smuggling (CVE-2023-51764, CVE-2023-51765, CVE-2023-51766 and
kin): only CRLF "." CRLF ends the data, never C{LF "." LF}, C{CR "." CR}
or any other mixture. A bare CR or a bare LF anywhere in the data is
recorded in L{DataReader.bare_line_end} so that the server can refuse
the message (rather than store a line end that a later hop may read
differently); the reader still consumes the data up to its real end, so
nothing of the body is ever read as commands.
"""

from __future__ import annotations

END_OF_DATA = b"\r\n.\r\n"

# The line end before the data (the DATA command's CRLF), put in front of
# the stream so that the first line is handled like every other one.
_VIRTUAL_START = b"\r\n"
_STUFFED = b"\r\n."
_CRLF = b"\r\n"


def has_bare_line_end(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """
    Whether C{data[start:end]} holds a CR not followed by LF or an LF not
    preceded by CR, judged inside that range only (the caller makes sure
    it neither starts with the LF of a CR before it nor ends between a CR
    and its LF). Three C{bytes.count} passes, no per-line Python work.
    """
    if end is None:
        end = len(data)
    crlf = data.count(b"\r\n", start, end)
    return data.count(b"\r", start, end) != crlf or data.count(b"\n", start, end) != crlf


def _held_tail(buffer: bytes) -> int:
    """
    @return: the length of the longest proper prefix of L{END_OF_DATA} that
        C{buffer} ends with: bytes that may begin the end marker and must
        wait for the next chunk.
    """
    for length in (4, 3, 2, 1):
        if buffer.endswith(END_OF_DATA[:length]):
            return length
    return 0


class DataReader:
    """
    Decode one message body: find the end, remove dot-stuffing, detect
    bare CR and LF.

    @ivar bare_line_end: L{True} once a CR not followed by LF, or an LF
        not preceded by CR, has been seen.
    @ivar discarding: set it to L{True} when the message is refused
        already (too big, bare line end): L{feed} then only looks for the
        end of the data and returns no body bytes.
    @ivar done: L{True} once the end of the data has been found.
    """

    def __init__(self) -> None:
        self._carry = _VIRTUAL_START
        # Bytes of the virtual start still to drop from the output.
        self._virtual = len(_VIRTUAL_START)
        self.bare_line_end = False
        self.discarding = False
        self.done = False

    def feed(self, chunk: bytes) -> tuple[bytes, bytes | None]:
        """
        Decode the next chunk of the data.

        @param chunk: bytes as received.
        @return: C{(body, rest)}: the body bytes decoded from this chunk
            (possibly empty; always empty while L{discarding}), and
            L{None} while the data has not ended, else the bytes received
            after the end marker (possibly empty), which are commands.
        @raise RuntimeError: if called after the end of the data.
        """
        if self.done:
            raise RuntimeError("data already ended")
        buffer = self._carry + chunk if self._carry else chunk
        # One scan for a line that starts with a dot: with none (nearly
        # every chunk of every message), the chunk holds neither the end
        # marker nor stuffing, and needs no second scan for either.
        plain = buffer.find(_STUFFED) == -1
        end = -1 if plain else buffer.find(END_OF_DATA)
        if end != -1:
            # Keep the CRLF that ends the last line; drop "." CRLF.
            region = buffer[: end + 2]
            rest: bytes | None = buffer[end + len(END_OF_DATA) :]
            self._carry = b""
            self.done = True
        else:
            hold = _held_tail(buffer)
            region = buffer[: len(buffer) - hold]
            self._carry = buffer[len(buffer) - hold :]
            rest = None
        if not region:
            return b"", rest
        # The region never ends between a CR and its LF (a trailing CR is
        # always held back), and never starts with the LF of a CR from the
        # chunk before, so the check is exact.
        if not self.bare_line_end and has_bare_line_end(region):
            self.bare_line_end = True
        if self.discarding:
            self._virtual = 0
            return b"", rest
        body = region if plain else region.replace(_STUFFED, _CRLF)
        if self._virtual:
            # The region starts with the virtual CRLF, intact: replace()
            # only ever removes the dot after a CRLF.
            body = body[self._virtual :]
            self._virtual = 0
        return body, rest
