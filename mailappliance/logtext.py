# -*- test-case-name: tests.test_logtext -*-
"""
How free text is written into a C{key=value} log line (DESIGN.md: one
event per line), so that a value holding spaces, quotes or line ends
cannot split the line or forge another field.
"""

from __future__ import annotations


def quote(text: str) -> str:
    """
    Quote a logged value that may hold spaces: C{"..."} with backslash,
    quote and line ends escaped.
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    return f'"{escaped}"'
