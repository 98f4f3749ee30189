# -*- test-case-name: tests.test_smtp_commands -*-
"""
Parsing SMTP command lines (RFC 5321 section 4.1) and the arguments of
MAIL and RCPT, with their extension parameters (RFC 1870 SIZE, RFC 6152
8BITMIME, RFC 6531 SMTPUTF8, RFC 4954 AUTH), and of BDAT (RFC 3030).

Everything here is pure: a parse either returns a value or raises
L{CommandRefused} carrying the exact reply, so the server only decides
what to do with the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailappliance.address import AddressError, Mailbox, parse_path
from mailappliance.smtp.replies import BDAT_SYNTAX, MAIL_SYNTAX, RCPT_SYNTAX, UNRECOGNISED, Reply, printable, reply

# RFC 1870 section 3: SIZE's value is 1*20DIGIT.
MAX_SIZE_DIGITS = 20

# RFC 3030 section 2: chunk-size is 1*DIGIT, without bound. Twenty digits
# (SIZE's bound) already count more octets than any client will send; a
# longer number is not a size anyone means, and is refused as unreadable.
MAX_CHUNK_SIZE_DIGITS = 20

# Verbs of HTTP/1.x requests (RFC 9110 section 9). A browser or proxy made
# to talk to an SMTP port (cross-protocol attacks) sends one of these
# first; the session is closed at once.
HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"CONNECT ", b"TRACE ", b"PATCH ")

_VERB = re.compile(rb"[A-Za-z]{1,16}\Z")
# RFC 5321 section 4.1.2: esmtp-keyword and esmtp-value.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_BODY_TYPES = {"7BIT": "7BIT", "8BITMIME": "8BITMIME"}
# RFC 3030 section 2: "BDAT" SP chunk-size [SP end-marker]; the verb and
# its space are gone, trailing spaces removed (see parse_command).
_CHUNK_SIZE = re.compile(rb"([0-9]{1,%d})(?: (.*))?\Z" % MAX_CHUNK_SIZE_DIGITS, re.DOTALL)
_LAST = b"LAST"


class CommandRefused(Exception):
    """
    A command cannot be carried out; L{reply} says why.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self.reply = reply


class BadChunkCommand(CommandRefused):
    """
    A BDAT command whose argument is wrong (RFC 3030 section 2).

    @ivar size: the chunk size, when it could be read (the octets that
        follow the command must then still be read and discarded, RFC 3030
        section 3); L{None} when it could not, so that where the octets end
        cannot be known.
    """

    def __init__(self, reply: Reply, size: int | None) -> None:
        super().__init__(reply)
        self.size = size


@dataclass(frozen=True)
class Command:
    """
    A command line split in two.

    @ivar verb: the command verb, upper-case (commands are
        case-insensitive, RFC 5321 section 2.4).
    @ivar argument: what follows the verb and one space, trailing spaces
        removed; C{b""} when there is nothing.
    """

    verb: str
    argument: bytes


@dataclass(frozen=True)
class MailFrom:
    """
    A parsed MAIL command.

    @ivar sender: the reverse-path, L{None} for C{<>}.
    @ivar size: the declared SIZE, or L{None}.
    @ivar body: C{"7BIT"} or C{"8BITMIME"}.
    @ivar smtputf8: whether SMTPUTF8 was given.
    @ivar auth: the C{AUTH=} value as given (xtext, RFC 4954 section 5),
        or L{None}; recorded, never acted on.
    """

    sender: Mailbox | None
    size: int | None = None
    body: str = "7BIT"
    smtputf8: bool = False
    auth: str | None = None


@dataclass(frozen=True)
class ChunkCommand:
    """
    A parsed BDAT command (RFC 3030 section 2).

    @ivar size: the number of octets of message data that follow the
        command line's CRLF.
    @ivar last: whether this is the last chunk of the message.
    """

    size: int
    last: bool = False


def is_http_request(line: bytes) -> bool:
    """
    @return: whether C{line} is the request line of an HTTP request.
    """
    return line.startswith(HTTP_METHODS)


def parse_command(line: bytes) -> Command:
    """
    Split a command line (without its CRLF) into verb and argument.

    @raise CommandRefused: C{500 5.5.2} for an empty line or a verb that is
        not a word of letters.
    """
    verb, _, argument = line.partition(b" ")
    if not _VERB.match(verb):
        raise CommandRefused(UNRECOGNISED)
    return Command(verb.decode("ascii").upper(), argument.rstrip(b" \t"))


def _split_path(argument: bytes, prefix: bytes, syntax: Reply) -> tuple[bytes, list[bytes]]:
    """
    Split C{FROM:<path> params} or C{TO:<path> params}.

    Spaces after the colon are tolerated (many clients send them, and
    Postfix and Exim accept them). The path ends at the first C{>} outside
    a quoted string. A path without its angle brackets (C{FROM:a@b.test},
    as scanners and other small devices send it) is taken up to the next
    space, as Postfix does by default (C{strict_rfc821_envelopes = no}).

    @return: the path, brackets included, and the parameters.
    @raise CommandRefused: with C{syntax} if the shape is wrong.
    """
    if argument[: len(prefix)].upper() != prefix:
        raise CommandRefused(syntax)
    rest = argument[len(prefix) :].lstrip(b" ")
    if not rest.startswith(b"<"):
        bare, _, params = rest.partition(b" ")
        if not bare or b"<" in bare or b">" in bare or b'"' in bare:
            raise CommandRefused(syntax)
        return b"<" + bare + b">", params.split()
    quoted = escaped = False
    for index in range(1, len(rest)):
        byte = rest[index]
        if escaped:
            escaped = False
        elif byte == 0x5C and quoted:  # backslash
            escaped = True
        elif byte == 0x22:  # double quote
            quoted = not quoted
        elif byte == 0x3E and not quoted:  # >
            end = index + 1
            break
    else:
        raise CommandRefused(syntax)
    path, params = rest[:end], rest[end:]
    if params and not params.startswith(b" "):
        raise CommandRefused(syntax)
    return path, params.split()


def _parameters(raw: list[bytes]) -> dict[str, str | None]:
    """
    Parse C{keyword[=value]} parameters; keywords are upper-cased.

    @raise CommandRefused: C{501 5.5.4} on bad syntax or a keyword given
        twice.
    """
    params: dict[str, str | None] = {}
    for item in raw:
        try:
            text = item.decode("ascii")
        except UnicodeDecodeError:
            raise CommandRefused(reply(501, "5.5.4", "Syntax error in parameters")) from None
        keyword, equals, value = text.partition("=")
        if not _KEYWORD.match(keyword) or (equals and not _VALUE.match(value)):
            raise CommandRefused(reply(501, "5.5.4", "Syntax error in parameters"))
        keyword = keyword.upper()
        if keyword in params:
            raise CommandRefused(reply(501, "5.5.4", f"Error: duplicate parameter {keyword}"))
        params[keyword] = value if equals else None
    return params


def _address(path: bytes, smtputf8: bool, syntax_status: str, what: str) -> Mailbox | None:
    """
    Parse a path, mapping address errors to replies.

    @raise CommandRefused: C{553 5.6.7} for a non-ASCII address without
        SMTPUTF8 (RFC 6531 section 3.5), else C{501 <syntax_status>}.
    """
    try:
        return parse_path(path, allow_utf8=smtputf8)
    except AddressError as e:
        if not smtputf8 and not path.isascii():
            raise CommandRefused(
                reply(553, "5.6.7", f"Error: non-ASCII {what} address requires SMTPUTF8")
            ) from None
        raise CommandRefused(reply(501, syntax_status, f"Bad {what} address syntax: {printable(e.reason)}")) from None


def parse_mail(argument: bytes, esmtp: bool) -> MailFrom:
    """
    Parse the argument of MAIL: C{FROM:<reverse-path> [params]}.

    @param esmtp: whether the session began with EHLO; after HELO no
        parameters are allowed (RFC 1869 section 4.5).
    @raise CommandRefused: C{501 5.5.4} for syntax and bad values, C{555
        5.5.4} for a parameter we do not know (RFC 5321 section
        4.1.1.11), C{504 5.5.4} for C{BODY=BINARYMIME} (not offered),
        C{553 5.6.7} / C{501 5.1.7} for the address. C{AUTH=} is
        accepted whatever its value (RFC 4954 section 5: a server that
        does not trust the client's claim ignores it, and clients send it
        after AUTH).
    """
    path, raw = _split_path(argument, b"FROM:", MAIL_SYNTAX)
    params = _parameters(raw)
    if params and not esmtp:
        raise CommandRefused(reply(555, "5.5.4", "Error: parameters need EHLO"))
    size: int | None = None
    body = "7BIT"
    smtputf8 = False
    auth: str | None = None
    for keyword, value in params.items():
        if keyword == "SIZE":
            if value is None or not value.isdigit() or len(value) > MAX_SIZE_DIGITS:
                raise CommandRefused(reply(501, "5.5.4", "Error: bad SIZE value"))
            size = int(value)
        elif keyword == "BODY":
            upper = (value or "").upper()
            if upper == "BINARYMIME":
                raise CommandRefused(reply(504, "5.5.4", "Error: BODY=BINARYMIME is not supported"))
            if upper not in _BODY_TYPES:
                raise CommandRefused(reply(501, "5.5.4", "Error: bad BODY value"))
            body = _BODY_TYPES[upper]
        elif keyword == "SMTPUTF8":
            if value is not None:
                raise CommandRefused(reply(501, "5.5.4", "Error: SMTPUTF8 takes no value"))
            smtputf8 = True
        elif keyword == "AUTH":
            auth = value or ""
        else:
            raise CommandRefused(reply(555, "5.5.4", f"Error: unsupported parameter {keyword}"))
    sender = _address(path, smtputf8, "5.1.7", "sender")
    return MailFrom(sender, size, body, smtputf8, auth)


def names_postmaster(argument: bytes) -> bool:
    """
    Whether the argument of RCPT is C{TO:<Postmaster>} (any case, no
    domain), which RFC 5321 section 4.5.1 requires to be accepted.
    """
    try:
        path, _ = _split_path(argument, b"TO:", RCPT_SYNTAX)
    except CommandRefused:
        return False
    return path.lower() == b"<postmaster>"


def parse_rcpt(argument: bytes, smtputf8: bool, postmaster: Mailbox) -> Mailbox:
    """
    Parse the argument of RCPT: C{TO:<forward-path> [params]}.

    @param smtputf8: whether the transaction's MAIL had SMTPUTF8.
    @param postmaster: what C{<Postmaster>} (no domain, see
        L{names_postmaster}) stands for: the configured postmaster.
    @raise CommandRefused: C{501 5.5.4} for syntax, C{555 5.5.4} for any
        parameter (none is offered for RCPT), C{553 5.6.7} / C{501 5.1.3}
        for the address (the null path included).
    """
    path, raw = _split_path(argument, b"TO:", RCPT_SYNTAX)
    params = _parameters(raw)
    for keyword in params:
        raise CommandRefused(reply(555, "5.5.4", f"Error: unsupported parameter {keyword}"))
    if path.lower() == b"<postmaster>":
        return postmaster
    recipient = _address(path, smtputf8, "5.1.3", "recipient")
    if recipient is None:
        raise CommandRefused(reply(501, "5.1.3", "Bad recipient address syntax: null path"))
    return recipient


def parse_bdat(argument: bytes) -> ChunkCommand:
    """
    Parse the argument of BDAT: C{chunk-size [SP "LAST"]} (RFC 3030 section
    2; C{LAST} in any case, as ABNF strings are case-insensitive).

    @raise BadChunkCommand: C{501 5.5.4}, with the size when it was a
        number of at most L{MAX_CHUNK_SIZE_DIGITS} digits (only what
        follows it is wrong), else without.
    """
    match = _CHUNK_SIZE.match(argument)
    if match is None:
        raise BadChunkCommand(BDAT_SYNTAX, None)
    size = int(match.group(1))
    marker = match.group(2)
    if marker is None:
        return ChunkCommand(size)
    if marker.upper() == _LAST:
        return ChunkCommand(size, last=True)
    raise BadChunkCommand(BDAT_SYNTAX, size)
