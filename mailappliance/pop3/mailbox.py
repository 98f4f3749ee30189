# -*- test-case-name: tests.test_pop3_mailbox -*-
"""
The Maildir side of a POP3 session: snapshot, lookup, and the UPDATE state.

Every function here blocks on the file system; the server calls them
through the disk pool, never on the reactor thread.

Maildir facts relied on (the delivery side lives elsewhere): a mailbox is a
folder with C{new/}, C{cur/} and C{tmp/}, any of which may be missing (no
mail yet). A message file is named C{<unique>} in C{new/} and
C{<unique>:2,<flags>} in C{cur/}; the unique part never changes, while the
flags may be changed at any time by another reader (which renames the file
in C{cur/}). Our own deliveries name files C{<unique>,S=<bytes>,W=<bytes>}
with CRLF line ends; C{W=} is the size with CRLF line ends, which is what
POP3 reports. For files without C{W=} (other programs, bare LF line ends)
the size is computed by reading the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from mailappliance.disk import fsync_directory
from mailappliance.dotstuff import wire_size
from mailappliance.maildir import remove_stale_tmp

# RFC 1939 section 7 (UIDL): a unique-id is 1 to 70 characters in the
# range 0x21 to 0x7E.
MAX_UID_LENGTH = 70

# Read size when computing the wire size of a file without W=.
SIZE_SCAN_CHUNK = 256 * 1024

# The Maildir "info" separator and the flags version we understand.
INFO_SEPARATOR = ":"
INFO_FLAGS_PREFIX = "2,"
SEEN_FLAG = "S"

_ORDER = re.compile(r"(\d+)(?:\.M(\d+))?")
_UID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_UID_LENGTH)


@dataclass(frozen=True)
class MessageInfo:
    """
    One message of a session's snapshot.

    @ivar unique: the Maildir unique part of the file name (before
        C{:2,}); it identifies the message whatever its flags.
    @ivar uid: its UIDL unique-id (see L{uid_for}).
    @ivar size: its size as sent (CRLF line ends), in octets.
    @ivar path: where the file was at snapshot time; it may since have
        moved (flags changed) or gone.
    """

    unique: str
    uid: str
    size: int
    path: str


def uid_for(unique: str) -> str:
    """
    The UIDL unique-id of a message: its Maildir unique part when that is
    a valid unique-id (1 to 70 characters, 0x21 to 0x7E), else a
    deterministic hash of it (64 hex digits), so it is stable across
    sessions and unique per mailbox (the unique part is unique per
    Maildir by construction).

    @param unique: the unique part of the file name.
    @return: the unique-id.
    """
    raw = os.fsencode(unique)
    if _UID.fullmatch(raw):
        return unique
    return hashlib.sha256(raw).hexdigest()


def unique_part(filename: str) -> str:
    """
    @return: the unique part of a Maildir file name (before any C{:}).
    """
    return filename.split(INFO_SEPARATOR, 1)[0]


def _declared_wire_size(unique: str) -> int | None:
    # Maildir++ size fields: ",S=<physical size>,W=<size with CRLF>".
    for field in unique.split(",")[1:]:
        if field.startswith("W=") and field[2:].isdigit():
            return int(field[2:])
    return None


def _read_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(SIZE_SCAN_CHUNK):
            yield chunk


def _order_key(unique: str) -> tuple[int, int, str]:
    # Maildir unique parts begin with the delivery time ("<sec>.M<usec>");
    # listing in that order gives the oldest message number 1, as clients
    # expect. Names of another shape go last, by name.
    match = _ORDER.match(unique)
    if match is None:
        return (2**63, 0, unique)
    return (int(match.group(1)), int(match.group(2) or 0), unique)


def _entries(directory: str) -> Iterable[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except FileNotFoundError:
        return []


def scan_mailbox(mailbox: str) -> list[MessageInfo]:
    """
    Take the snapshot of a mailbox for a new session: the messages in
    C{new/} and C{cur/}, oldest first. Hidden files and anything that is
    not a regular file are skipped. A missing mailbox (or a missing
    C{new/} or C{cur/}) is empty. If one unique part appears twice (a
    rename by another reader caught half-way), the copy in C{cur/} wins.
    A file that vanishes during the scan is left out.

    Leftovers of deliveries that died are removed from C{tmp/} on the way
    (L{mailappliance.maildir.remove_stale_tmp}).

    @param mailbox: the Maildir folder.
    @return: the messages in POP3 order (message number = index + 1).
    @raise OSError: if a folder exists but cannot be read.
    """
    remove_stale_tmp(mailbox)
    found: dict[str, MessageInfo] = {}
    for sub in ("cur", "new"):
        for entry in _entries(os.path.join(mailbox, sub)):
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_file():
                    continue
                unique = unique_part(entry.name)
                if unique in found or not unique:
                    continue
                size = _declared_wire_size(unique)
                if size is None:
                    size = wire_size(_read_chunks(entry.path))
            except FileNotFoundError:
                continue
            found[unique] = MessageInfo(unique, uid_for(unique), size, entry.path)
    return sorted(found.values(), key=lambda m: _order_key(m.unique))


def find_message(mailbox: str, unique: str) -> str | None:
    """
    Where a message is now: C{new/<unique>}, or the file in C{cur/} whose
    unique part is C{unique} (whatever its flags).

    @return: the path, or L{None} if the message is gone.
    """
    candidate = os.path.join(mailbox, "new", unique)
    if os.path.isfile(candidate):
        return candidate
    for entry in _entries(os.path.join(mailbox, "cur")):
        if unique_part(entry.name) == unique and not entry.name.startswith("."):
            return entry.path
    return None


def open_message(mailbox: str, message: MessageInfo) -> BinaryIO | None:
    """
    Open a message of the snapshot for reading, following it if another
    reader renamed it in C{cur/} since the snapshot.

    @return: the open file (binary, the caller closes it), or L{None} if
        the message no longer exists.
    @raise OSError: for errors other than the file being gone.
    """
    fd = _open_descriptor(mailbox, message)
    if fd is None:
        return None
    try:
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_descriptor(mailbox: str, message: MessageInfo) -> int | None:
    # The file descriptor of open_message(): read_message_start() reads
    # with it directly (open() adds an fstat, an ioctl and a seek to the
    # open(2), and builds three Python objects).
    path: str | None = message.path
    for _ in range(3):
        if path is None:
            return None
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # Renamed or removed since we looked: look again.
            path = find_message(mailbox, message.unique)
    return None


@dataclass(frozen=True)
class MessageStart:
    """
    The first bytes of a message file, read in one disk job.

    @ivar data: the bytes read.
    @ivar rest: L{None} when C{data} is the whole file (the file is
        closed); else the open file, positioned after C{data}, for the
        caller to read on and close.
    """

    data: bytes
    rest: BinaryIO | None


def read_message_start(mailbox: str, message: MessageInfo, limit: int) -> MessageStart | None:
    """
    Open a message of the snapshot (following it as L{open_message} does),
    read its first bytes and, if that was all of it, close it: a message
    smaller than C{limit} costs an open, two reads and a close, in one
    disk job.

    @param limit: the most bytes to read. Ask for one byte more than the
        expected size: the read comes back short, and a second read that
        finds nothing proves the end of the file.
    @return: the start, or L{None} if the message no longer exists.
    @raise OSError: for errors other than the file being gone (the file
        is closed).
    """
    fd = _open_descriptor(mailbox, message)
    if fd is None:
        return None
    try:
        data = os.read(fd, limit)
        while len(data) < limit:
            more = os.read(fd, limit - len(data))
            if not more:
                os.close(fd)
                return MessageStart(data, None)
            data += more
        rest = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return MessageStart(data, rest)


def read_message_starts(
    mailbox: str, requests: Sequence[tuple[MessageInfo, int]]
) -> list[MessageStart | None | OSError]:
    """
    L{read_message_start} for several messages in one disk job (reading
    ahead costs one hand-off to a disk thread for many messages).

    @param requests: pairs of the message and the most bytes to read.
    @return: for each request in order, its start, L{None} if the message
        no longer exists, or the L{OSError} its read raised (one error
        does not stop the others).
    """
    starts: list[MessageStart | None | OSError] = []
    for message, limit in requests:
        try:
            starts.append(read_message_start(mailbox, message, limit))
        except OSError as e:
            starts.append(e)
    return starts


@dataclass(frozen=True)
class UpdateResult:
    """
    What the UPDATE state did.

    @ivar deleted: messages removed.
    @ivar seen: messages marked seen (moved to C{cur/} with the C{S} flag).
    @ivar failed: changes that could not be made (logged by the caller).
    """

    deleted: int
    seen: int
    failed: int


def _seen_name(filename: str) -> str | None:
    unique, sep, info = filename.partition(INFO_SEPARATOR)
    if not sep:
        return unique + INFO_SEPARATOR + INFO_FLAGS_PREFIX + SEEN_FLAG
    if not info.startswith(INFO_FLAGS_PREFIX):
        # An info of another version: not ours to rewrite.
        return None
    flags = info[len(INFO_FLAGS_PREFIX) :]
    if SEEN_FLAG in flags:
        return None
    # Maildir flags are kept in ASCII order.
    return unique + INFO_SEPARATOR + INFO_FLAGS_PREFIX + "".join(sorted(flags + SEEN_FLAG))


class _Locator:
    """
    Finds where messages of a snapshot are now, for the UPDATE state.

    The snapshot's path is right unless another reader changed the
    message since login, so callers try it first; only for a message not
    there does the locator list C{cur/} and C{new/}, and it lists them at
    most once per update (listing per message made QUIT quadratic in the
    mailbox size). The listing reflects the folders when it was made: a
    message moved again after that is treated as gone.
    """

    def __init__(self, mailbox: str) -> None:
        self._mailbox = mailbox
        self._where: dict[str, str] | None = None

    def moved_to_cur(self, message: MessageInfo) -> str | None:
        """
        @return: the name the message has in C{cur/} once a reader (Dovecot,
            or our own UPDATE state) marked it seen, if that differs from
            its snapshot path.
        """
        name = _seen_name(os.path.basename(message.path))
        if name is None:
            return None
        return os.path.join(self._mailbox, "cur", name)

    def listed(self, unique: str) -> str | None:
        """
        @return: the path of the message with this unique part according
            to the one listing of C{cur/} and C{new/}, or L{None}.
        """
        if self._where is None:
            self._where = {}
            # new/ last, so that a copy in cur/ wins, as in scan_mailbox().
            for sub in ("new", "cur"):
                for entry in _entries(os.path.join(self._mailbox, sub)):
                    if not entry.name.startswith("."):
                        self._where[unique_part(entry.name)] = entry.path
        return self._where.get(unique)


def _delete(locator: _Locator, message: MessageInfo) -> str | None:
    """
    Remove one message, trying its snapshot path, then its seen name in
    C{cur/}, then the listing.

    @return: the folder it was removed from, or L{None} if it was gone.
    @raise OSError: if it could not be removed.
    """
    moved = locator.moved_to_cur(message)
    for path in (message.path, moved, None):
        if path is None:
            path = locator.listed(message.unique)
            if path is None:
                return None
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        return os.path.dirname(path)
    return None


def _mark_seen(locator: _Locator, cur: str, message: MessageInfo) -> tuple[str, str] | None | bool:
    """
    Move one message to C{cur/} with the seen flag, from its snapshot path
    or, if it is not there any more, from where the listing finds it.

    @return: the folders changed (source, target); C{True} if it was
        seen already; L{None} if it is gone.
    @raise OSError: if it could not be moved.
    """
    path = message.path
    for attempt in range(2):
        if attempt:
            path = locator.listed(message.unique)
            if path is None:
                return None
        new_name = _seen_name(os.path.basename(path))
        if new_name is None:
            return True
        target = os.path.join(cur, new_name)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            # cur/ exists (apply_update made sure): the source is gone.
            continue
        return os.path.dirname(path), cur
    return None


def apply_update(mailbox: str, deleted: Iterable[MessageInfo], retrieved: Iterable[MessageInfo]) -> UpdateResult:
    """
    The POP3 UPDATE state (RFC 1939 section 6): remove the messages marked
    deleted and mark the retrieved ones seen (move from C{new/} to C{cur/}
    with the C{S} flag, as Dovecot does, so IMAP readers see them read).
    A message already gone counts as deleted; one that cannot be changed
    counts as failed. The changed folders are fsynced, once each.

    Each message is looked for where the snapshot saw it first (and, for
    a deletion, under the name another reader gives it when marking it
    seen); C{cur/} and C{new/} are listed at most once, and only if some
    message is in neither place. A retrieved message that was already
    seen at login is left as it is.

    @param mailbox: the Maildir folder.
    @param deleted: the messages to remove.
    @param retrieved: the messages retrieved and not deleted.
    @return: the counts.
    """
    removed = seen = failed = 0
    touched: set[str] = set()
    locator = _Locator(mailbox)
    for message in deleted:
        try:
            folder = _delete(locator, message)
        except OSError:
            failed += 1
            continue
        removed += 1
        if folder is not None:
            touched.add(folder)
    retrieved = list(retrieved)
    cur = os.path.join(mailbox, "cur")
    if any(_seen_name(os.path.basename(m.path)) is not None for m in retrieved):
        try:
            # Once, not per message: another program may have removed it.
            os.makedirs(cur, mode=0o700, exist_ok=True)
        except OSError:
            failed += len(retrieved)
            retrieved = []
    for message in retrieved:
        try:
            outcome = _mark_seen(locator, cur, message)
        except OSError:
            failed += 1
            continue
        if outcome is None:
            continue
        seen += 1
        if isinstance(outcome, tuple):
            touched.update(outcome)
    for directory in sorted(touched):
        try:
            fsync_directory(directory)
        except OSError:
            failed += 1
    return UpdateResult(removed, seen, failed)
