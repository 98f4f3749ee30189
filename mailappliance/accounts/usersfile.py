# -*- test-case-name: tests.test_accounts_usersfile -*-
"""
The syntax of the users file (SPEC section 3), Dovecot passwd-file style::

    # comment
    alice@example.test:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$...
    bob@example.test:{BLF-CRYPT}$2b$12$...:1000:1000::/home/bob::

One account per line: the address, C{:}, the password hash. Further
C{:}-separated Dovecot fields (uid, gid, home, extra fields) are tolerated
and ignored. Lines whose first non-blank character is C{#} are comments;
blank lines are ignored. A password field ends at the next C{:}, as in
Dovecot, so a C{{PLAIN}} password cannot contain one.

The whole file is checked when it is read: an unknown scheme, a malformed
hash, a bad or duplicate address or an address that is unsafe as a folder
name stops the load with a L{UsersFileError} naming the file and line, so a
mistake is found when the file is edited, not at the next login.

Everything here is pure (no I/O), shared by the server's
L{mailappliance.accounts.users.UsersDatabase} and the command line's
editing functions (L{mailappliance.accounts.edit}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailappliance.accounts.hashing import MalformedHash, check_hash_format
from mailappliance.address import AddressError, Mailbox, parse_mailbox
from mailappliance.watchedfile import FileLineError

# The address field ends at the first ':' outside an address literal
# (C{[IPv6:...]} contains colons; nothing else in a mailbox can).
_ADDRESS_FIELD = re.compile(rb"(?:[^:\[]|\[[^\]]*\])*")


class AccountError(Exception):
    """
    The users file cannot be used or changed as asked. C{str()} is one line
    for the command line to print.
    """


class UsersFileError(FileLineError, AccountError):
    """
    The users file has a mistake, or cannot be read (see
    L{FileLineError} for its attributes).
    """


@dataclass(frozen=True)
class UserRecord:
    """
    One account of the users file.

    @ivar mailbox: the address, as parsed (L{Mailbox.key} is its identity).
    @ivar password_hash: C{"{SCHEME}..."}, well-formed for a known scheme.
    @ivar line_number: the 1-based line it was read from.
    """

    mailbox: Mailbox
    password_hash: str
    line_number: int


@dataclass(frozen=True)
class ParsedLine:
    """
    The fields of an account line, as byte offsets into the line, so that
    an editor can replace one field and leave every other byte alone.

    @ivar record: the account.
    @ivar password_start: offset of the password field in the line.
    @ivar password_end: offset just after it (the next C{:}, or the end of
        the content before the line break).
    """

    record: UserRecord
    password_start: int
    password_end: int


def split_lines(data: bytes) -> list[bytes]:
    """
    Split a file into lines, each with its C{\\n} (the last one may lack
    it). Joining the result gives C{data} back exactly.
    """
    # Not bytes.splitlines, which also splits on a lone CR: only LF ends a
    # line here (a CR before it is part of the line break).
    lines = data.split(b"\n")
    result = [line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        result.append(lines[-1])
    return result


def unsafe_folder_reason(mailbox: Mailbox) -> str | None:
    """
    Whether the local part can be used as a Maildir folder name
    (C{DATA_DIR/mail/domain/local/}) without escaping its domain folder or
    hiding in it.

    @return: L{None} if it is safe, else why not.
    """
    local = mailbox.local
    if local.startswith('"'):
        return "a quoted local part cannot be a folder name"
    if "/" in local:
        return "a local part with '/' cannot be a folder name"
    if "\0" in local:
        return "a local part with NUL cannot be a folder name"
    if local.startswith("."):
        return "a local part starting with '.' cannot be a folder name"
    if ".." in local:
        return "a local part with '..' cannot be a folder name"
    return None


def parse_address(text: str) -> Mailbox:
    """
    Parse an account's address: a mailbox whose local part is safe as a
    folder name.

    @raise AddressError: if it is not.
    """
    mailbox = parse_mailbox(text, allow_utf8=True)
    reason = unsafe_folder_reason(mailbox)
    if reason is not None:
        raise AddressError(reason)
    return mailbox


def parse_line(line: bytes, number: int) -> ParsedLine | None:
    """
    Parse one line of the file.

    @param line: the line, with or without its line break.
    @param number: its 1-based number, for the record.
    @return: the parsed account, or L{None} for a comment or blank line.
    @raise ValueError: with the reason (one line) if the line is wrong.
    """
    content = line.rstrip(b"\n")
    if content.endswith(b"\r"):
        content = content[:-1]
    stripped = content.strip()
    if not stripped or stripped.startswith(b"#"):
        return None
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("line is not valid UTF-8") from None
    address_end = _ADDRESS_FIELD.match(content).end()  # type: ignore[union-attr]
    if address_end == len(content):
        raise ValueError("missing ':' between address and password")
    address_text = content[:address_end].decode("utf-8").strip()
    try:
        mailbox = parse_address(address_text)
    except AddressError as e:
        raise ValueError(f"invalid address {address_text!r}: {e.reason}") from None
    password_start = address_end + 1
    password_end = content.find(b":", password_start)
    if password_end < 0:
        password_end = len(content)
    password_hash = content[password_start:password_end].decode("utf-8")
    if not password_hash:
        raise ValueError(f"{mailbox.key}: missing password hash")
    try:
        check_hash_format(password_hash)
    except MalformedHash as e:
        raise ValueError(f"{mailbox.key}: {e.reason}") from None
    return ParsedLine(UserRecord(mailbox, password_hash, number), password_start, password_end)


def parse_users(data: bytes, path: str) -> dict[str, UserRecord]:
    """
    Parse a whole users file.

    @param data: the file's content.
    @param path: its name, for error messages.
    @return: the accounts by L{Mailbox.key}, in file order.
    @raise UsersFileError: at the first mistake, with its line number.
    """
    records: dict[str, UserRecord] = {}
    for number, line in enumerate(split_lines(data), 1):
        try:
            parsed = parse_line(line, number)
        except ValueError as e:
            raise UsersFileError(path, number, str(e)) from None
        if parsed is None:
            continue
        record = parsed.record
        first = records.get(record.mailbox.key)
        if first is not None:
            raise UsersFileError(
                path, number, f"duplicate address {record.mailbox.key} (first on line {first.line_number})"
            )
        records[record.mailbox.key] = record
    return records
