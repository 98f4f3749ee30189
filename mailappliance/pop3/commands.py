# -*- test-case-name: tests.test_pop3_server -*-
"""
The POP3 commands: argument checking and replies, one function each.

L{handler_for} is the whole state machine: it returns the function for a
command valid in the session's state, or the C{-ERR} line for one that is
not. Each handler takes the session (a
L{mailappliance.pop3.server.POP3Protocol}) and the argument bytes (what
followed the first space; possibly empty) and either replies at once or
starts an asynchronous operation through the session.

Message numbers are checked before use: missing, not a decimal number
(negative, letters, huge), out of range (0 included) or deleted are each a
clean C{-ERR}; RFC 1939 section 5 says deleted messages must not be
listed or counted, and the twisted.mail server got this wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mailappliance.pop3.sasl import MECHANISMS

IMPLEMENTATION = b"mailappliance"

# A message number has at most this many digits; more cannot name a
# message (and would cost a big-integer conversion).
MAX_NUMBER_DIGITS = 9

_DIGITS = re.compile(rb"[0-9]+")

# The session states of RFC 1939; a session in UPDATE takes no commands.
AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"

Handler = Callable[[Any, bytes], None]


class _BadArgument(Exception):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply


def _arguments(argument: bytes, least: int, most: int) -> list[bytes]:
    parts = argument.split()
    if len(parts) < least:
        raise _BadArgument(b"-ERR Missing argument")
    if len(parts) > most:
        raise _BadArgument(b"-ERR Too many arguments")
    return parts


def _message_index(session: Any, number: bytes) -> int:
    """
    @return: the snapshot index of a message number that names a message
        not deleted.
    @raise _BadArgument: with the reply otherwise.
    """
    if not _DIGITS.fullmatch(number):
        raise _BadArgument(b"-ERR Invalid message number")
    if len(number) > MAX_NUMBER_DIGITS:
        raise _BadArgument(b"-ERR No such message")
    index = int(number) - 1
    if not 0 <= index < len(session.snapshot):
        raise _BadArgument(b"-ERR No such message")
    if index in session.deleted:
        raise _BadArgument(b"-ERR Message %d is deleted" % (index + 1,))
    return index


def _live(session: Any) -> list[int]:
    return [i for i in range(len(session.snapshot)) if i not in session.deleted]


# -- any state ----------------------------------------------------------------


def capa(session: Any, argument: bytes) -> None:
    """
    CAPA (RFC 2449 section 5).
    """
    _arguments(argument, 0, 0)
    lines = [b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
    lines.append(b"SASL " + b" ".join(MECHANISMS))
    if session.tls_available():
        lines.append(b"STLS")
    lines.append(b"IMPLEMENTATION " + IMPLEMENTATION)
    session.send_lines(b"+OK Capability list follows", lines)


def quit(session: Any, argument: bytes) -> None:
    """
    QUIT (RFC 1939 sections 4 and 6).
    """
    _arguments(argument, 0, 0)
    session.quit()


# -- AUTHORIZATION ------------------------------------------------------------


def user(session: Any, argument: bytes) -> None:
    """
    USER name (RFC 1939 section 7). The name is not checked here, so the
    reply does not tell whether the account exists.
    """
    if not session.plaintext_login_allowed():
        session.refuse_plaintext()
        return
    name = argument.strip()
    if not name:
        raise _BadArgument(b"-ERR Missing argument")
    session.set_user(name)
    session.send_line(b"+OK Send your password")


def pass_(session: Any, argument: bytes) -> None:
    """
    PASS password (RFC 1939 section 7): the password is all of the line
    after "PASS ", spaces included.
    """
    if not session.plaintext_login_allowed():
        session.refuse_plaintext()
        return
    name = session.take_user()
    if name is None:
        raise _BadArgument(b"-ERR Send USER first")
    session.authenticate(name, argument, "USER")


def auth(session: Any, argument: bytes) -> None:
    """
    AUTH (RFC 5034): without an argument, list the mechanisms (the RFC 1734
    form some clients still probe with); AUTH PLAIN with or without an
    initial response.
    """
    parts = _arguments(argument, 0, 2)
    if not parts:
        session.send_lines(b"+OK Supported mechanisms follow", list(MECHANISMS))
        return
    if parts[0].upper() not in MECHANISMS:
        raise _BadArgument(b"-ERR Unsupported authentication mechanism")
    if not session.plaintext_login_allowed():
        session.refuse_plaintext()
        return
    if len(parts) == 1:
        session.begin_sasl()
    else:
        session.sasl_initial_response(parts[1])


def stls(session: Any, argument: bytes) -> None:
    """
    STLS (RFC 2595 section 4).
    """
    _arguments(argument, 0, 0)
    if session.tls_active:
        raise _BadArgument(b"-ERR TLS is already active")
    if not session.tls_available():
        raise _BadArgument(b"-ERR STLS not available")
    session.start_tls()


# -- TRANSACTION --------------------------------------------------------------


def stat(session: Any, argument: bytes) -> None:
    """
    STAT: the count and total size of the messages not deleted.
    """
    _arguments(argument, 0, 0)
    live = _live(session)
    session.send_line(b"+OK %d %d" % (len(live), sum(session.snapshot[i].size for i in live)))


def list_(session: Any, argument: bytes) -> None:
    """
    LIST [msg]: sizes as sent (CRLF line ends).
    """
    parts = _arguments(argument, 0, 1)
    if parts:
        index = _message_index(session, parts[0])
        session.send_line(b"+OK %d %d" % (index + 1, session.snapshot[index].size))
        return
    live = _live(session)
    total = sum(session.snapshot[i].size for i in live)
    session.send_lines(
        b"+OK %d messages (%d octets)" % (len(live), total),
        [b"%d %d" % (i + 1, session.snapshot[i].size) for i in live],
    )


def uidl(session: Any, argument: bytes) -> None:
    """
    UIDL [msg] (RFC 1939 section 7).
    """
    parts = _arguments(argument, 0, 1)
    if parts:
        index = _message_index(session, parts[0])
        session.send_line(b"+OK %d %s" % (index + 1, session.snapshot[index].uid.encode("ascii")))
        return
    session.send_lines(
        b"+OK Unique-ID listing follows",
        [b"%d %s" % (i + 1, session.snapshot[i].uid.encode("ascii")) for i in _live(session)],
    )


def retr(session: Any, argument: bytes) -> None:
    """
    RETR msg: the whole message, streamed from disk.
    """
    (number,) = _arguments(argument, 1, 1)
    session.send_message(_message_index(session, number), None)


def top(session: Any, argument: bytes) -> None:
    """
    TOP msg n (RFC 1939 section 7): the header and the first n body lines.
    """
    number, count = _arguments(argument, 2, 2)
    index = _message_index(session, number)
    if not _DIGITS.fullmatch(count):
        raise _BadArgument(b"-ERR Invalid line count")
    # Any count beyond the digits limit means "all of it".
    lines = int(count) if len(count) <= MAX_NUMBER_DIGITS else 10**MAX_NUMBER_DIGITS
    session.send_message(index, lines)


def dele(session: Any, argument: bytes) -> None:
    """
    DELE msg: mark deleted; the file goes at QUIT only.
    """
    (number,) = _arguments(argument, 1, 1)
    index = _message_index(session, number)
    session.deleted.add(index)
    session.send_line(b"+OK Message %d deleted" % (index + 1,))


def rset(session: Any, argument: bytes) -> None:
    """
    RSET: unmark all deleted messages.
    """
    _arguments(argument, 0, 0)
    session.deleted.clear()
    session.send_line(b"+OK %d messages (%d octets)" % (len(session.snapshot), sum(m.size for m in session.snapshot)))


def noop(session: Any, argument: bytes) -> None:
    """
    NOOP.
    """
    _arguments(argument, 0, 0)
    session.send_line(b"+OK")


def _checked(handler: Handler) -> Handler:
    def run(session: Any, argument: bytes) -> None:
        try:
            handler(session, argument)
        except _BadArgument as e:
            session.send_line(e.reply)

    run.__doc__ = handler.__doc__
    return run


_ANY = frozenset({AUTHORIZATION, TRANSACTION})
_BEFORE_LOGIN = frozenset({AUTHORIZATION})
_AFTER_LOGIN = frozenset({TRANSACTION})

_COMMANDS: dict[bytes, tuple[Handler, frozenset[str]]] = {
    keyword: (_checked(handler), states)
    for keyword, handler, states in [
        (b"CAPA", capa, _ANY),
        (b"QUIT", quit, _ANY),
        (b"USER", user, _BEFORE_LOGIN),
        (b"PASS", pass_, _BEFORE_LOGIN),
        (b"AUTH", auth, _BEFORE_LOGIN),
        (b"STLS", stls, _BEFORE_LOGIN),
        (b"STAT", stat, _AFTER_LOGIN),
        (b"LIST", list_, _AFTER_LOGIN),
        (b"UIDL", uidl, _AFTER_LOGIN),
        (b"RETR", retr, _AFTER_LOGIN),
        (b"TOP", top, _AFTER_LOGIN),
        (b"DELE", dele, _AFTER_LOGIN),
        (b"RSET", rset, _AFTER_LOGIN),
        (b"NOOP", noop, _AFTER_LOGIN),
    ]
}


def handler_for(keyword: bytes, state: str) -> Handler | bytes:
    """
    @param keyword: the command keyword, upper-case.
    @param state: the session state.
    @return: the handler to call with C{(session, argument)}, or the
        C{-ERR} reply line for an unknown command or one not valid in
        C{state}.
    """
    entry = _COMMANDS.get(keyword)
    if entry is None:
        return b"-ERR Unknown command"
    handler, states = entry
    if state not in states:
        if state == AUTHORIZATION:
            return b"-ERR Not logged in"
        return b"-ERR Not valid after login"
    return handler
