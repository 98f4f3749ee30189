# -*- test-case-name: tests.test_smtp_replies -*-
"""
SMTP replies: the code, the enhanced status code (RFC 3463, announced
with ENHANCEDSTATUSCODES, RFC 2034) and the text, and the fixed replies
of the server.

Every reply carries an enhanced status code (SPEC section 5), with one
exception: the lines of the EHLO reply. RFC 5321 section 4.1.1.1 makes
each of them C{250-keyword params} (RFC 2034 section 3 exempts the EHLO
reply for that reason), and clients read the keyword as the first word of
the line; a status code there would hide every extension from them
(Python's smtplib, Postfix and Exim would see no STARTTLS, SIZE or AUTH).
"""

from __future__ import annotations

from dataclasses import dataclass

# Reply text never echoes client input, so it is always printable ASCII;
# the check is a guard against a programming mistake, not against input.
_PRINTABLE = set(range(0x20, 0x7F))


@dataclass(frozen=True)
class Reply:
    """
    One SMTP reply, possibly of several lines.

    @ivar code: the three-digit reply code.
    @ivar status: the enhanced status code (C{"2.1.0"}), put at the start
        of every line's text; L{None} only for the EHLO reply.
    @ivar lines: the text of each line (at least one).
    """

    code: int
    status: str | None
    lines: tuple[str, ...]

    @property
    def positive(self) -> bool:
        """
        Whether this is a 2xx or 3xx reply.
        """
        return self.code < 400

    @property
    def text(self) -> str:
        """
        All lines' text, joined with spaces (for logs).
        """
        return " ".join(self.lines)

    def to_bytes(self) -> bytes:
        """
        The reply as sent: C{code-text} CRLF for every line but the last,
        C{code text} CRLF for the last (RFC 5321 section 4.2.1).

        @raise ValueError: if a line holds a character that is not
            printable ASCII.
        """
        out = []
        last = len(self.lines) - 1
        for index, line in enumerate(self.lines):
            text = line if self.status is None else f"{self.status} {line}"
            encoded = text.encode("ascii")
            if not set(encoded) <= _PRINTABLE:
                raise ValueError("reply text must be printable ASCII")
            separator = b" " if index == last else b"-"
            out.append(b"%d%s%s\r\n" % (self.code, separator, encoded))
        return b"".join(out)


def printable(text: str, limit: int = 200) -> str:
    """
    Make text that may quote client input (an address error, a resolver's
    reason) fit in a reply: printable ASCII only, at most C{limit}
    characters.
    """
    ascii_text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else "?" for c in ascii_text)[:limit]


def reply(code: int, status: str, *lines: str) -> Reply:
    """
    Make a reply with an enhanced status code.
    """
    return Reply(code, status, lines)


def ehlo_reply(hostname: str, greeting: str, keywords: list[str]) -> Reply:
    """
    The EHLO reply: the host name and a greeting, then one extension per
    line (RFC 5321 section 4.1.1.1, C{ehlo-ok-rsp}).
    """
    return Reply(250, None, (f"{hostname} {greeting}", *keywords))


def greeting(hostname: str) -> Reply:
    return reply(220, "2.0.0", f"{hostname} ESMTP mailappliance")


def closing(hostname: str) -> Reply:
    return reply(221, "2.0.0", f"{hostname} Bye")


def helo_ok(hostname: str) -> Reply:
    return reply(250, "2.0.0", hostname)


def queued(queue_id: str) -> Reply:
    return reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def chunk_received(size: int) -> Reply:
    """
    The reply to a BDAT chunk that is not the last (RFC 3030 section 3: a
    250 for each chunk, once its octets are read).
    """
    return reply(250, "2.0.0", f"Ok: {size} octets received")


def chunk_size_unknown(hostname: str) -> Reply:
    # RFC 3463 4.5.0: a protocol error; the octets after a BDAT whose size
    # cannot be read cannot be told from commands, so the session ends.
    return reply(421, "4.5.0", f"{hostname} Error: BDAT chunk size unreadable, closing connection")


def bare_lf_after_bdat(hostname: str) -> Reply:
    # The octets of a chunk follow its BDAT line at once (RFC 3030 section
    # 2); that line not being acted on, they cannot be told from commands,
    # as after a BDAT whose size cannot be read: the session ends.
    return reply(421, "4.5.0", f"{hostname} Error: BDAT command ended by a bare <LF>, closing connection")


def timeout(hostname: str) -> Reply:
    return reply(421, "4.4.2", f"{hostname} Error: timeout exceeded")


def too_many_connections(hostname: str) -> Reply:
    return reply(421, "4.7.0", f"{hostname} Error: too many connections")


def shutting_down(hostname: str) -> Reply:
    # RFC 3463 4.3.2: the system is not accepting network messages.
    return reply(421, "4.3.2", f"{hostname} Service shutting down, try again later")


def too_many_connections_from_ip(hostname: str) -> Reply:
    return reply(421, "4.7.0", f"{hostname} Error: too many connections from your address")


def too_many_errors(hostname: str) -> Reply:
    return reply(421, "4.7.0", f"{hostname} Error: too many errors")


def http_request(hostname: str) -> Reply:
    return reply(421, "4.7.0", f"{hostname} Error: this is an SMTP server, not HTTP")


def internal_error(hostname: str) -> Reply:
    return reply(421, "4.3.0", f"{hostname} Error: internal server error")


def too_many_auth_failures(hostname: str) -> Reply:
    return reply(421, "4.7.0", f"{hostname} Error: too many authentication failures")


def challenge(encoded: str) -> Reply:
    """
    A SASL challenge (RFC 4954 section 4): C{334}, a space and the
    base64 text, without an enhanced status code (the text is the
    challenge, and clients decode all of it).
    """
    return Reply(334, None, (encoded,))


OK = reply(250, "2.0.0", "Ok")
SENDER_OK = reply(250, "2.1.0", "Ok")
RECIPIENT_OK = reply(250, "2.1.5", "Ok")
START_DATA = reply(354, "2.0.0", "End data with <CR><LF>.<CR><LF>")
VRFY_CANNOT = reply(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery")
EXPN_NOT_AVAILABLE = reply(502, "5.5.1", "EXPN is not available")
HELP = reply(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
    "See RFC 5321",
)

# 500: the command itself.
LINE_TOO_LONG = reply(500, "5.5.2", "Error: line too long")
UNRECOGNISED = reply(500, "5.5.2", "Error: command not recognized")
BARE_LINE_END_IN_COMMAND = reply(500, "5.5.2", "Error: bare CR or LF in command")
# A command line ended with a bare LF (see mailappliance.smtp.lines); the
# text is Postfix's (smtpd_forbid_bare_newline).
BARE_LF_RECEIVED = reply(500, "5.5.2", "Error: bare <LF> received")
# 501: its arguments.
EHLO_SYNTAX = reply(501, "5.5.4", "Syntax: EHLO hostname")
HELO_SYNTAX = reply(501, "5.5.4", "Syntax: HELO hostname")
MAIL_SYNTAX = reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
VRFY_SYNTAX = reply(501, "5.5.4", "Syntax: VRFY address")
NO_ARGUMENTS = reply(501, "5.5.4", "Syntax error: no arguments allowed")
BDAT_SYNTAX = reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
# 502: known, not implemented.
NOT_IMPLEMENTED = reply(502, "5.5.1", "Error: command not implemented")
# 503: bad sequence.
NEED_HELO = reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = reply(503, "5.5.1", "Error: need RCPT command")
# 554 rather than 503 once RCPTs were given but none accepted (RFC 2920
# section 3.1, RFC 5321 section 3.3).
NO_VALID_RECIPIENTS = reply(554, "5.5.1", "Error: no valid recipients")
# BDAT gets 503 in that case (RFC 2920 section 3.1 allows 503 or 554): the
# chunk's octets are discarded either way, never read as commands.
NO_VALID_RECIPIENTS_FOR_BDAT = reply(503, "5.5.1", "Error: no valid recipients")
# RFC 3030 section 3: DATA and BDAT cannot be mixed in one transaction; and
# once the chunks began, the recipients (named in Received:) are settled.
DATA_AFTER_BDAT = reply(503, "5.5.1", "Error: DATA after BDAT")
RCPT_AFTER_BDAT = reply(503, "5.5.1", "Error: RCPT after BDAT")

UNKNOWN_USER = reply(550, "5.1.1", "Error: no such user here")
AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required")
# The same refusal where AUTH is offered only after STARTTLS (RFC 3207
# section 4 gives this text).
STARTTLS_FIRST = reply(530, "5.7.0", "Must issue a STARTTLS command first")
# RFC 6409 section 4.1 / SPEC section 5: the envelope sender of a
# submission must belong to the authenticated user.
SENDER_NOT_OWNED = reply(553, "5.7.1", "Sender address not owned by user")
SENDER_LOOKUP_FAILED = reply(451, "4.3.0", "Error: temporary sender lookup failure")

# STARTTLS (RFC 3207).
STARTTLS_READY = reply(220, "2.0.0", "Ready to start TLS")
STARTTLS_SYNTAX = reply(501, "5.5.4", "Syntax: STARTTLS")
TLS_ALREADY_ACTIVE = reply(503, "5.5.1", "Error: TLS already active")
STARTTLS_IN_TRANSACTION = reply(503, "5.5.1", "Error: MAIL transaction in progress")

# AUTH (RFC 4954 sections 4 and 6).
AUTH_OK = reply(235, "2.7.0", "Authentication successful")
AUTH_NOT_ENABLED = reply(503, "5.5.1", "Error: authentication not enabled")
AUTH_NEED_EHLO = reply(503, "5.5.1", "Error: send EHLO first")
ALREADY_AUTHENTICATED = reply(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION = reply(503, "5.5.1", "Error: MAIL transaction in progress")
AUTH_SYNTAX = reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_BAD_BASE64 = reply(501, "5.5.2", "Error: invalid base64 data")
AUTH_CANCELLED = reply(501, "5.0.0", "Authentication cancelled")
AUTH_LINE_TOO_LONG = reply(500, "5.5.6", "Authentication Exchange line is too long")
UNKNOWN_MECHANISM = reply(504, "5.5.4", "Unrecognized authentication type")
ENCRYPTION_REQUIRED = reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_FAILED = reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY_FAILURE = reply(454, "4.7.0", "Temporary authentication failure")
RELAY_DENIED = reply(554, "5.7.1", "Relay access denied")
TOO_MANY_RECIPIENTS = reply(452, "4.5.3", "Error: too many recipients")
MESSAGE_TOO_BIG = reply(552, "5.3.4", "Error: message size exceeds fixed limit")
BARE_LINE_END_IN_DATA = reply(
    550, "5.6.0", "Error: message contains bare CR or LF (line ends must be CRLF); not accepted"
)
LOOKUP_FAILED = reply(451, "4.3.0", "Error: temporary recipient lookup failure")
QUEUE_FAILED = reply(451, "4.3.0", "Error: queue file write error")
QUEUE_FULL = reply(452, "4.3.1", "Error: insufficient system storage")
