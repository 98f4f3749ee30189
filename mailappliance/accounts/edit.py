# -*- test-case-name: tests.test_accounts_edit -*-
"""
Changing the users file from the command line (C{mailappliance user ...}).

These functions block and need no reactor. Each change is a whole
read-modify-write under an exclusive C{flock} on the sidecar file
C{PATH.lock}, so that two commands run at once never lose an update, and
the new version replaces the file atomically
(L{mailappliance.disk.write_file_durably}), so that the running server,
which reads the file without the lock, sees the old version or the new one
and never a half-written file. A users file that is a symbolic link is
written through it (its target is replaced; the link stays).

Only the line concerned changes: comments, blank lines and every other
line are kept byte for byte, and C{passwd} replaces only the password field
(the address as written and any further Dovecot fields stay). New lines are
C{address.key:hash}. A file that is missing is created (mode 0600); an
existing file keeps its mode, and its owner when we are allowed to set it.

The file must be free of mistakes before a change: an edit does not carry
an existing mistake into a new version without saying so.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mailappliance.accounts.hashing import MalformedHash, check_hash_format
from mailappliance.accounts.usersfile import (
    AccountError,
    UserRecord,
    UsersFileError,
    parse_address,
    parse_line,
    parse_users,
    split_lines,
)
from mailappliance.address import AddressError, Mailbox, parse_mailbox
from mailappliance.disk import write_file_durably

LOCK_SUFFIX = ".lock"
NEW_FILE_MODE = 0o600

# Characters that would end the password field or the line.
_FIELD_BREAKERS = frozenset(":\r\n")

# (content, its accounts) -> new content; raises AccountError to refuse.
_Change = Callable[[bytes, dict[str, UserRecord]], bytes]


def add_user(path: str, address: str, password_hash: str) -> UserRecord:
    """
    Add an account at the end of the file.

    @param path: the users file; created if missing (its folder is not).
    @param address: the address as typed.
    @param password_hash: C{"{SCHEME}..."}, as from
        L{mailappliance.accounts.hashing.hash_password}.
    @return: the new record.
    @raise AccountError: if the address is malformed or unsafe as a folder
        name, already has an account (compared case-insensitively), the
        hash is malformed, the file has a mistake, or on an I/O error.
    """
    try:
        mailbox = parse_address(address)
    except AddressError as e:
        raise AccountError(f"invalid address {address!r}: {e.reason}") from None
    new_line = _account_line(mailbox, password_hash)
    added: list[UserRecord] = []

    def change(data: bytes, records: dict[str, UserRecord]) -> bytes:
        existing = records.get(mailbox.key)
        if existing is not None:
            raise AccountError(f"{mailbox.key} already exists (line {existing.line_number} of {path})")
        lines = split_lines(data)
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        lines.append(new_line)
        parsed = parse_line(new_line, len(lines))
        assert parsed is not None
        added.append(parsed.record)
        return b"".join(lines)

    _edit(path, change)
    return added[0]


def set_password(path: str, address: str, password_hash: str) -> None:
    """
    Replace the password hash of an account.

    @param path: the users file.
    @param address: the account's address, in any case.
    @param password_hash: the new C{"{SCHEME}..."}.
    @raise AccountError: if the address is malformed or has no account,
        the hash is malformed, the file has a mistake, or on an I/O error.
    """
    mailbox = _parse_existing(address)
    _check_hash(password_hash)
    new_hash = password_hash.encode("utf-8")

    def change(data: bytes, records: dict[str, UserRecord]) -> bytes:
        lines = split_lines(data)
        index = _line_index_of(mailbox, records)
        parsed = parse_line(lines[index], index + 1)
        assert parsed is not None
        line = lines[index]
        lines[index] = line[: parsed.password_start] + new_hash + line[parsed.password_end :]
        return b"".join(lines)

    _edit(path, change)


def delete_user(path: str, address: str) -> None:
    """
    Remove an account's line. Its mailbox is not touched.

    @param path: the users file.
    @param address: the account's address, in any case.
    @raise AccountError: if the address is malformed or has no account,
        the file has a mistake, or on an I/O error.
    """
    mailbox = _parse_existing(address)

    def change(data: bytes, records: dict[str, UserRecord]) -> bytes:
        lines = split_lines(data)
        del lines[_line_index_of(mailbox, records)]
        return b"".join(lines)

    _edit(path, change)


def list_users(path: str) -> list[UserRecord]:
    """
    The accounts of the file, in file order. Needs no lock: the file is
    only ever replaced whole.

    @param path: the users file; a missing file has no accounts.
    @raise AccountError: (a L{mailappliance.accounts.usersfile.UsersFileError})
        if the file cannot be read or has a mistake.
    """
    data, _ = _read(path)
    return list(parse_users(data, path).values())


def _account_line(mailbox: Mailbox, password_hash: str) -> bytes:
    _check_hash(password_hash)
    return f"{mailbox.key}:{password_hash}\n".encode()


def _check_hash(password_hash: str) -> None:
    if not isinstance(password_hash, str) or _FIELD_BREAKERS.intersection(password_hash):
        raise AccountError("invalid password hash: it may not contain ':' or a line break")
    try:
        check_hash_format(password_hash)
    except MalformedHash as e:
        raise AccountError(f"invalid password hash: {e.reason}") from None


def _parse_existing(address: str) -> Mailbox:
    try:
        return parse_mailbox(address, allow_utf8=True)
    except AddressError as e:
        raise AccountError(f"invalid address {address!r}: {e.reason}") from None


def _line_index_of(mailbox: Mailbox, records: dict[str, UserRecord]) -> int:
    record = records.get(mailbox.key)
    if record is None:
        raise AccountError(f"no such account: {mailbox.key}")
    return record.line_number - 1


@contextmanager
def _exclusive_lock(path: str) -> Iterator[None]:
    """
    Hold an exclusive C{flock} on C{PATH.lock} (created if missing). The
    lock is on a sidecar file because the users file itself is replaced by
    each change, and a lock on a replaced file protects nothing.

    @param path: the users file's real path (symbolic links resolved), so
        that edits through different links to one file share one lock.
    """
    fd = os.open(path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, NEW_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)


def _read(path: str, real_path: str | None = None) -> tuple[bytes, os.stat_result | None]:
    """
    @param real_path: the file to read when not C{path} itself (C{path}
        with its symbolic links resolved); errors name C{path}.
    @return: the content and status of the file, or C{(b"", None)} if it is
        missing.
    @raise UsersFileError: if it cannot be read.
    """
    try:
        with open(real_path or path, "rb") as f:
            return f.read(), os.fstat(f.fileno())
    except FileNotFoundError:
        return b"", None
    except OSError as e:
        raise UsersFileError(path, None, f"cannot read the users file: {e.strerror or e}") from None


def _edit(path: str, change: _Change) -> None:
    """
    Apply C{change} to the file under the lock and write the result.

    When C{path} is a symbolic link (the file kept elsewhere, by
    configuration management or in a shared folder), the change is written
    through it: the link's target is replaced (its temporary file next to
    it, renamed over it, the target's folder synced), and the link stays.
    A dangling link gets its target created.
    """
    # Renaming over the link itself would replace the link with a plain
    # file and leave its target unchanged.
    target = os.path.realpath(path)
    try:
        with _exclusive_lock(target):
            data, status = _read(path, target)
            new_data = change(data, parse_users(data, path))
            mode = NEW_FILE_MODE if status is None else stat.S_IMODE(status.st_mode)
            # The new version keeps the old one's mode, owner and group (an
            # administrator running this as root must not leave the server,
            # running as another user, unable to read its users file).
            owner = None if status is None else (status.st_uid, status.st_gid)
            write_file_durably(target, new_data, mode, owner=owner)
    except OSError as e:
        raise AccountError(f"cannot update {path}: {e.strerror or e}") from None
