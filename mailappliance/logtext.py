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
from collections.abc import Iterator


def quote(text: str) -> str:
    """
    Quote a logged value that may hold spaces: C{"..."} with backslash,
    quote and line ends escaped.
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    return f'"{escaped}"'


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
