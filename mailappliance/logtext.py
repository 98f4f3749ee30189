# -*- test-case-name: tests.test_logtext -*-
"""
How free text is written into a C{key=value} log line (DESIGN.md: one
event per line), so that a value holding spaces, quotes or line ends
cannot split the line or forge another field.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
from collections.abc import Iterator


def quote(text: str) -> str:
    """
    Quote a logged value that may hold spaces: C{"..."} with backslash,
    quote and line ends escaped, and other control characters (C0, DEL,
    C1; a remote server's reply may hold terminal escape sequences) as
    C{\\xNN}.
    """
    if _UNSAFE.search(text) is None:
        return f'"{text}"'
    return '"%s"' % _UNSAFE.sub(_escape, text)


def value(text: str) -> str:
    """
    A logged value as it is when it is one plain word (a path, a name), else
    L{quote}d: a space in it cannot split the line into fields.
    """
    if text and _WORD.fullmatch(text):
        return text
    return quote(text)


_WORD = re.compile(r'[^\s\\"\x00-\x1f\x7f-\x9f]+')
_UNSAFE = re.compile(r'[\\"\x00-\x1f\x7f-\x9f]')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\r": "\\r", "\n": "\\n"}


def _escape(match: re.Match) -> str:
    char = match.group()
    return _ESCAPES.get(char) or f"\\x{ord(char):02x}"


def _session_ids() -> Iterator[str]:
    # A prefix drawn once per process, then a counter: unique within the
    # process, and unlikely to repeat one of an earlier run in the same log.
    prefix = base64.b32encode(os.urandom(5)).decode("ascii").lower()[:6]
    for n in itertools.count(1):
        yield f"{prefix}{n:x}"


_sessions = _session_ids()


def next_session_id() -> str:
    """
    @return: a new id for a client session, logged as C{session=} on each
        of its lines so that sessions from one address can be told apart.
    """
    return next(_sessions)
