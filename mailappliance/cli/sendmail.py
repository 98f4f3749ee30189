# -*- test-case-name: tests.test_cli_sendmail -*-
"""
C{mailappliance sendmail}: sendmail-compatible injection for cron jobs and
scripts on this host (also when the program is called as C{sendmail}, e.g.
through a symbolic link).

    mailappliance sendmail [-f SENDER] [-t] [-i|-oi] [RECIPIENT...] < message

The message is read from standard input, its line ends made CRLF, its
header completed (below), and it is written durably into the queue's drop
folder (see
L{mailappliance.queue.incoming}); the server picks it up within a second,
or as soon as it starts. Exit status per sendmail and sysexits(3): 0 when
the message is safely in the drop folder, 64 for a usage error, 65 for bad
data (no recipients, message too large, a malformed address), 73/74/75 when
the drop folder cannot be written.

Options: C{-f SENDER} (or C{-fSENDER}, C{-r}) sets the envelope sender
(C{<>} or an empty string for the null sender); by default it is the
invoking user at the qualifying domain (below). C{-t} takes the recipients
from the C{To:}, C{Cc:} and C{Bcc:} headers, in addition to those given,
and removes C{Bcc:}. Without C{-i} (or C{-oi}), a line holding a single
C{.} ends the message, as in sendmail. C{-F NAME} is the full name in
the C{From:} field this command adds (below). C{-o...}, C{-B TYPE},
C{-bm}, C{-v} and C{-N ...} are accepted and ignored.

C{--config FILE} and C{-c FILE}, as before the subcommand, and
sendmail's own C{-C FILE} (its alternate configuration file) name the
configuration file; also in the attached forms C{--config=FILE},
C{-cFILE}, C{-CFILE}. They are options like the others: after C{--} they
are recipients, and as the value of an option that takes one (C{-f -c})
they are that value.

A bare name without C{@} (C{root}, as cron passes it), as a recipient or
as the sender, is qualified with the qualifying domain: the first of
C{local_domains}, or the postmaster's domain when there is none (Postfix's
C{append_at_myorigin}). Anything else that is not an address is refused.

The message becomes a valid RFC 5322 message (section 3.6: C{Date:} and
C{From:} are required), as Postfix's cleanup does for local submissions
and as RFC 6409 section 8 allows a submission server: a message without
C{Date:}, C{Message-ID:} (made like the submission service's, with the
server's host name) or C{From:} (the envelope sender, with the C{-F}
name; C{MAILER-DAEMON} at the qualifying domain for the null sender) gets
them, by the submission service's own
L{mailappliance.smtp.headers.HeaderCompleter}: at the end of the header
section, and, when the input does not start with a header section at all
(C{echo text | sendmail root}), followed by the empty line that makes the
text the body.
"""

from __future__ import annotations

import email.utils
import getpass
import os
import time

from mailappliance.address import AddressError, Mailbox, parse_mailbox
from mailappliance.cli.main import CommandError
from mailappliance.queue.ids import QueueIdGenerator
from mailappliance.queue.incoming import write_drop
from mailappliance.smtp.handlers import missing_header_fields
from mailappliance.smtp.headers import HeaderCompleter

EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75

READ_CHUNK = 64 * 1024

# A -F name longer than this is cut, so that the From: field stays well
# under the 998-octet line limit of RFC 5322 section 2.1.1.
MAX_FULL_NAME = 200

# The options naming the configuration file (see the module docstring).
_CONFIG_OPTIONS = ("--config", "-c", "-C")


def add_parser(commands, common) -> None:
    import argparse

    parser = commands.add_parser("sendmail", help="queue a message from standard input (sendmail-compatible)",
                                 add_help=False, prefix_chars="\0")
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    parser.set_defaults(run=run, raw_sendmail=True)


class Options:
    def __init__(self) -> None:
        self.sender: str | None = None
        self.from_headers = False
        self.dot_ends = True
        self.recipients: list[str] = []
        self.config: str | None = None
        self.full_name = ""


def parse_arguments(arguments: list[str]) -> Options:
    """
    Parse sendmail's options.

    @raise CommandError: (status 64) for a usage error.
    """
    options = Options()
    i = 0
    while i < len(arguments):
        arg = arguments[i]
        i += 1
        if arg == "--":
            options.recipients += arguments[i:]
            break
        if not arg.startswith("-") or arg == "-":
            options.recipients.append(arg)
            continue
        if arg in _CONFIG_OPTIONS:
            if i >= len(arguments):
                raise CommandError(f"option {arg} needs a value", EX_USAGE)
            options.config = arguments[i]
            i += 1
            continue
        if arg.startswith("--config=") or arg[:2] in ("-c", "-C"):
            value = arg.split("=", 1)[1] if arg.startswith("--") else arg[2:]
            if not value:
                raise CommandError(f"option {arg} needs a value", EX_USAGE)
            options.config = value
            continue
        if arg in ("-f", "-r", "-F", "-B", "-N", "-R", "-V", "-X", "-L", "-O"):
            if i >= len(arguments):
                raise CommandError(f"option {arg} needs a value", EX_USAGE)
            value = arguments[i]
            i += 1
            if arg in ("-f", "-r"):
                options.sender = value
            elif arg == "-F":
                options.full_name = value
            continue
        if arg[:2] in ("-f", "-r"):
            options.sender = arg[2:]
        elif arg[:2] == "-F":
            options.full_name = arg[2:]
        elif arg == "-t":
            options.from_headers = True
        elif arg in ("-i", "-oi"):
            options.dot_ends = False
        elif arg[:2] in ("-F", "-o", "-B", "-N", "-R", "-V", "-X", "-L", "-O", "-b", "-v", "-e", "-q", "-h"):
            if arg in ("-bp", "-bs", "-bd", "-bi", "-q") or arg.startswith("-q"):
                raise CommandError(f"option {arg} is not supported (use mailappliance queue list)", EX_USAGE)
        else:
            raise CommandError(f"unknown option {arg}", EX_USAGE)
    return options


def read_message(stream, dot_ends: bool, limit: int) -> bytes:
    """
    Read the message, with CRLF line ends (bare CR or LF become CRLF).

    @raise CommandError: (status 65) when it is larger than C{limit}.
    """
    data = bytearray()
    while True:
        chunk = stream.read(READ_CHUNK)
        if not chunk:
            break
        data += chunk
        if len(data) > limit * 2 + READ_CHUNK:
            raise CommandError(f"message larger than the limit of {limit} bytes", EX_DATAERR)
    text = bytes(data).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if dot_ends and b"." in lines:
        lines = lines[: lines.index(b".")]
    message = b"".join(line + b"\r\n" for line in lines)
    if len(message) > limit:
        raise CommandError(f"message larger than the limit of {limit} bytes", EX_DATAERR)
    return message


def _header_section(message: bytes) -> tuple[bytes, bytes]:
    end = message.find(b"\r\n\r\n")
    if end < 0:
        # Only headers (or only a body when it does not start with one).
        return message, b""
    return message[: end + 2], message[end + 2:]


def _unfolded_fields(headers: bytes) -> list[tuple[str, str, bytes]]:
    """
    The header fields: (lower-case name, unfolded value, raw bytes).
    """
    fields: list[list] = []
    for line in headers.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += line.decode("utf-8", "replace")
            fields[-1][2] += line + b"\r\n"
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            fields.append(["", "", line + b"\r\n"])
            continue
        fields.append([name.strip().lower().decode("ascii", "replace"), value.decode("utf-8", "replace"),
                       line + b"\r\n"])
    return [tuple(f) for f in fields]  # type: ignore[misc]


def recipients_from_headers(message: bytes) -> tuple[list[str], bytes]:
    """
    For C{-t}: the addresses of To:, Cc: and Bcc:, and the message without
    its Bcc: fields.
    """
    headers, body = _header_section(message)
    fields = _unfolded_fields(headers)
    addresses = []
    kept = []
    for name, value, raw in fields:
        if name in ("to", "cc", "bcc"):
            addresses += [a for _, a in email.utils.getaddresses([value]) if a]
        if name != "bcc":
            kept.append(raw)
    return addresses, b"".join(kept) + body


def qualifying_domain(config) -> str:
    """
    The domain that bare names get (Postfix's C{myorigin}): the first of
    C{local_domains}, so that mail to C{root} and bounces to the default
    sender stay here, or the postmaster's domain when there is none.
    """
    server = config.server
    return server.local_domains[0] if server.local_domains else server.postmaster.domain


def parse_address(text: str, domain: str) -> Mailbox:
    """
    Parse a recipient or sender given to sendmail: a mailbox (with or
    without angle brackets), or a bare name without C{@}, which is
    qualified with C{domain}.

    @raise AddressError: if it is neither.
    """
    text = text.strip().strip("<>")
    if "@" not in text:
        text = f"{text}@{domain}"
    return parse_mailbox(text)


class _At:
    """
    A clock that always says C{when} (for L{QueueIdGenerator}).
    """

    def __init__(self, when: float) -> None:
        self.when = when

    def seconds(self) -> float:
        return self.when


def from_field(sender: Mailbox | None, full_name: str, domain: str) -> bytes:
    """
    The C{From:} field for a message that has none: the envelope sender
    (C{MAILER-DAEMON@domain} for the null sender) with the C{-F} name.
    The name is the invoker's text: line breaks and other control
    characters become spaces, so it cannot end the field, it is cut at
    L{MAX_FULL_NAME} characters, and it is quoted where needed, or RFC
    2047-encoded when it is not ASCII.
    """
    address = str(sender) if sender is not None else f"MAILER-DAEMON@{domain}"
    name = " ".join("".join(c if c.isprintable() else " " for c in full_name[:MAX_FULL_NAME]).split())
    if not name:
        value = address
    elif address.isascii():
        value = email.utils.formataddr((name, address))
    else:
        # An SMTPUTF8 address (RFC 6532): formataddr only takes ASCII ones.
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        value = f'"{quoted}" <{address}>'
    return f"From: {value}\r\n".encode("utf-8")


def complete_message(message: bytes, sender: Mailbox | None, full_name: str, domain: str, hostname: str,
                     now: float, message_id: str) -> bytes:
    """
    Add C{From:}, C{Message-ID:} and C{Date:} where missing (see the
    module docstring), with the submission service's L{HeaderCompleter}.

    @param message: the message, CRLF line ends.
    @param message_id: unique; the local part of C{Message-ID:}, whose
        right-hand side is C{hostname}.
    @param now: the Unix time of submission, for C{Date:}.
    """
    fields = [(b"from", from_field(sender, full_name, domain)), *missing_header_fields(message_id, hostname, now)]
    completer = HeaderCompleter(fields)
    return completer.feed(message) + completer.finish()


def run(config, args, stdin, stdout) -> int:
    options = getattr(args, "options", None) or parse_arguments(list(args.arguments))
    domain = qualifying_domain(config)
    binary_stdin = getattr(stdin, "buffer", stdin)
    message = read_message(binary_stdin, options.dot_ends, config.limits.max_message_size)
    recipients = list(options.recipients)
    if options.from_headers:
        found, message = recipients_from_headers(message)
        recipients += found
    if not recipients:
        raise CommandError("no recipients given (name them, or use -t)", EX_USAGE)
    try:
        parsed = [parse_address(r, domain) for r in recipients]
    except AddressError as e:
        raise CommandError(f"bad recipient address: {e.reason}", EX_NOUSER) from None
    user = _user()
    sender_text = options.sender if options.sender is not None else user
    sender_text = sender_text.strip()
    if sender_text in ("", "<>"):
        sender = None
    else:
        try:
            sender = parse_address(sender_text, domain)
        except AddressError as e:
            raise CommandError(f"bad sender address {sender_text!r}: {e.reason}", EX_DATAERR) from None
    now = time.time()
    message = complete_message(message, sender, options.full_name, domain, config.server.hostname, now,
                               QueueIdGenerator(_At(now)).next_id())
    incoming = os.path.join(config.queue_dir, "incoming")
    if not os.path.isdir(incoming):
        raise CommandError(f"{incoming}: no such folder (start the server once to create the queue)",
                           EX_CANTCREAT)
    try:
        write_drop(incoming, sender, parsed, message, user=user, uid=os.getuid())
    except PermissionError as e:
        raise CommandError(f"cannot write into {incoming}: {e.strerror}", EX_CANTCREAT) from None
    except OSError as e:
        raise CommandError(f"cannot queue the message: {e.strerror}", EX_TEMPFAIL) from None
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return f"uid{os.getuid()}"

