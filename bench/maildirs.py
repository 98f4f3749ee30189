"""
Maildirs for the benchmark: counting delivered messages, and filling a
mailbox for the POP3 workload (W4) the way each server's own delivery
would have left it.
"""

from __future__ import annotations

import os

MESSAGE_LINE_LENGTH = 76


def count_messages(maildir: str) -> int:
    """
    @return: the message files in C{new/} and C{cur/} (0 if the Maildir
        does not exist yet).
    """
    total = 0
    for sub in ("new", "cur"):
        try:
            with os.scandir(os.path.join(maildir, sub)) as it:
                total += sum(1 for entry in it if not entry.name.startswith("."))
        except FileNotFoundError:
            pass
    return total


def message_text(size: int, number: int) -> bytes:
    """
    A message of exactly C{size} bytes with CRLF line ends: a few header
    lines, then lines of L{MESSAGE_LINE_LENGTH} characters (like
    C{smtp-source -l}).
    """
    header = (f"From: <sender@example.test>\r\nTo: <bench@example.test>\r\n"
              f"Subject: benchmark message {number}\r\nMessage-ID: <{number}@bench.example.test>\r\n\r\n").encode()
    lines = []
    remaining = size - len(header)
    n = 0
    while remaining > 0:
        text = f"{n:06d}".encode() + b"X" * (MESSAGE_LINE_LENGTH - 6)
        line = text[: max(remaining - 2, 0)] + b"\r\n"
        lines.append(line)
        remaining -= len(line)
        n += 1
    return header + b"".join(lines)


def fill_maildir(maildir: str, count: int, size: int, line_end: bytes, owner: tuple[int, int] | None = None) -> None:
    """
    Put C{count} messages of C{size} bytes (CRLF form) into C{maildir/new/},
    named as a Maildir++ delivery names them (C{<sec>.M<usec>P<pid>Q<n>.<host>,S=<file size>,W=<CRLF size>}).

    @param line_end: C{b"\\r\\n"} for mailappliance (it stores messages as
        received), C{b"\\n"} for Dovecot (which stores LF and converts on
        output).
    @param owner: C{(uid, gid)} for every folder and file, or L{None}.
    """
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub), mode=0o700, exist_ok=True)
    base = 1_700_000_000
    for n in range(count):
        wire = message_text(size, n)
        data = wire if line_end == b"\r\n" else wire.replace(b"\r\n", line_end)
        name = f"{base + n}.M{n:06d}P1Q{n}.bench,S={len(data)},W={len(wire)}"
        path = os.path.join(maildir, "new", name)
        with open(path, "wb") as f:
            f.write(data)
        if owner is not None:
            os.chown(path, *owner)
    if owner is not None:
        for directory in _parents_within(maildir, 3):
            os.chown(directory, *owner)
        for sub in ("new", "cur", "tmp"):
            os.chown(os.path.join(maildir, sub), *owner)


def _parents_within(path: str, levels: int) -> list[str]:
    found = [path]
    for _ in range(levels - 1):
        path = os.path.dirname(path)
        found.append(path)
    return found
