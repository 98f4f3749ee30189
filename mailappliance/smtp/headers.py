# -*- test-case-name: tests.test_smtp_headers -*-
"""
Completing the header of a submitted message (RFC 6409 section 8): a
message without a C{Message-ID:} (section 8.3) or a C{Date:} (section
8.2) gets one.

The same transform, with no fields to add, serves the C{smtp} service:
there too our C{Received:} field is written in front of the data, and a
message that has no header section of its own (RFC 5322 section 3.5 lets
a client send a body alone) would otherwise have its first line read as
a malformed field of ours. Such a message gets the empty line that ends
our header section; with nothing to look for, only its first line is
looked at.

L{HeaderCompleter} is a stream transform between the DATA reader and the
spool: it never holds the message, only the start of the current header
line until it knows what the line is (at most L{MAX_HELD} octets). Once
the header section has ended, bytes go through untouched and unscanned.

Where the fields go: a message can only be streamed to the spool front to
back, and whether a field is missing is known only at the end of the
header section, so the missing fields are added there, as the last
fields of the header section, just before the empty line (Postfix's
cleanup does the same). RFC 5322 section 3.6 puts no order on these
fields.

How the header section is read (RFC 5322 sections 2.2 and 3.6.8):

  - a field starts with a name of printable ASCII other than C{:},
    followed by C{:} (white space before the colon is the obsolete form
    of RFC 5322 section 4.5, still recognised);
  - a line starting with a space or a tab continues the field before it,
    and is never taken for a field of its own (a folded C{ Date: x} does
    not count);
  - names compare case-insensitively and must match whole
    (C{X-Date:} or C{Resent-Date:} are not C{Date:});
  - the header section ends at the first empty line; it also ends at the
    first line that is neither a field nor a continuation. In that case an
    empty line is added after the new fields, so that they stay in a
    header section and the rest stays the body;
  - a message with no header section at all is one whose first line is
    neither a field nor empty (whitespace first included: nothing to
    continue), or whose data ends within a first line that has no colon:
    it always gets the empty line, since the header fields written in
    front of the data (our C{Received:}, then any added here) need it to
    end their header section. A message whose first line is empty has
    an empty header section and its separator already; an empty message
    needs none (RFC 5322 section 3.5: the body is optional).
"""

from __future__ import annotations

# A line's start is held until it is known to be a field (its colon), a
# continuation, an empty line, or something else; RFC 5322 section 2.1.1
# limits a line to 998 octets, so a longer "name" is no field name.
MAX_HELD = 998

# Field names that the completer adds when missing, in the order added.
MESSAGE_ID = b"message-id"
DATE = b"date"

_CRLF = b"\r\n"
_WSP = b" \t"
_COLON = 0x3A


def _is_ftext(byte: int) -> bool:
    # RFC 5322 section 3.6.8: ftext is %d33-57 / %d59-126.
    return 33 <= byte <= 126 and byte != _COLON


_FIELD_NAME_END, _NOT_A_FIELD, _NEED_MORE = range(3)


def _field_name(line: bytes) -> tuple[int, bytes]:
    """
    Classify the start of a header line that does not begin with white
    space.

    @param line: the bytes of the line held so far.
    @return: C{(_FIELD_NAME_END, name)} for a field, C{(_NOT_A_FIELD, b"")},
        or C{(_NEED_MORE, b"")} when the bytes so far could still be
        either.
    """
    index = 0
    length = len(line)
    while index < length and _is_ftext(line[index]):
        index += 1
    if index == 0:
        return _NOT_A_FIELD, b""
    name_end = index
    while index < length and line[index] in _WSP:
        index += 1
    if index == length:
        return (_NOT_A_FIELD if length >= MAX_HELD else _NEED_MORE), b""
    if line[index] == _COLON:
        return _FIELD_NAME_END, line[:name_end]
    return _NOT_A_FIELD, b""


class HeaderCompleter:
    """
    Adds missing header fields to a message as it streams.

    Feed it the message in any chunks with L{feed}, then call L{finish}
    once; the concatenation of what they return is the message with any
    missing field added, and with an empty line in front when it has no
    header section (the data always follows header fields of ours). Line
    ends are CRLF; a bare LF also ends a line here (such a message is
    refused anyway, see L{mailappliance.smtp.data}, so only robustness
    matters).
    """

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        """
        @param fields: C{(lower-case name, whole field line with its
            CRLF)} for each field to add when the message lacks it, in the
            order to add them; empty to add nothing (then only the first
            line is looked at, to tell whether the message has a header
            section).
        """
        self._fields = fields
        self._seen: set[bytes] = set()
        self._in_header = True
        # At the start of a line (possibly with its first bytes in _held).
        self._line_start = True
        self._held = bytearray()
        self._first_line = True

    @property
    def in_header(self) -> bool:
        """
        Whether the header section is still being read.
        """
        return self._in_header

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next bytes of the message.
        @return: the bytes to pass on now (possibly fewer than given: the
            start of an unclassified line is held back).
        """
        if not self._in_header:
            return data
        out = bytearray()
        position = 0
        end = len(data)
        while position < end and self._in_header:
            if not self._line_start:
                # Inside a field or continuation line: pass it through.
                newline = data.find(b"\n", position)
                if newline == -1:
                    out += data[position:]
                    return bytes(out)
                out += data[position : newline + 1]
                position = newline + 1
                self._line_start = True
                continue
            newline = data.find(b"\n", position, position + MAX_HELD - len(self._held))
            stop = newline + 1 if newline != -1 else min(end, position + MAX_HELD - len(self._held))
            self._held += data[position:stop]
            position = stop
            self._classify(out)
        out += data[position:]
        return bytes(out)

    def finish(self) -> bytes:
        """
        The message has ended: add what is still missing.

        @return: the last bytes to pass on.
        """
        if not self._in_header:
            return b""
        held = bytes(self._held)
        if held:
            # The data ended within a line that could still have become a
            # field (or, a lone CR, the empty line): without its colon it is
            # none, and ends the header section like any such line.
            out = bytearray()
            self._end_header(out, held, add_separator=True)
            return bytes(out)
        out = bytearray(held)
        self._held.clear()
        if (out or not self._line_start) and not out.endswith(b"\n"):
            # Only a message not ending in a line end gets here (the DATA
            # reader always ends the data with CRLF): end its last line,
            # or the new fields would join it.
            out += _CRLF
        out += self._missing()
        self._in_header = False
        return bytes(out)

    def _missing(self) -> bytes:
        return b"".join(line for name, line in self._fields if name not in self._seen)

    def _classify(self, out: bytearray) -> None:
        """
        Decide what the held start of a line is, if it can be told yet,
        and pass it on (with any fields to add in front).
        """
        held = bytes(self._held)
        first = held[0]
        if first == 0x0D and len(held) == 1:
            return
        if held.startswith(_CRLF) or first == 0x0A:
            # The empty line: the header section ends here.
            self._end_header(out, held, add_separator=False)
            return
        if first in _WSP:
            if self._first_line:
                # Nothing for it to continue: there is no header section.
                self._end_header(out, held, add_separator=True)
            else:
                self._pass_line(out, held)
            return
        kind, name = _field_name(held)
        if kind == _NEED_MORE and not held.endswith(b"\n"):
            return
        if kind == _FIELD_NAME_END:
            self._seen.add(name.lower())
            self._pass_line(out, held)
        else:
            self._end_header(out, held, add_separator=True)

    def _pass_line(self, out: bytearray, held: bytes) -> None:
        out += held
        self._held.clear()
        self._first_line = False
        self._line_start = held.endswith(b"\n")
        if not self._fields:
            # The message has a header section: nothing else to find out.
            self._in_header = False

    def _end_header(self, out: bytearray, held: bytes, add_separator: bool) -> None:
        missing = self._missing()
        out += missing
        # On the first line, the header section that ends is ours: the
        # fields written in front of the data need the empty line even
        # when none is added here.
        if add_separator and (missing or self._first_line):
            out += _CRLF
        out += held
        self._held.clear()
        self._in_header = False
