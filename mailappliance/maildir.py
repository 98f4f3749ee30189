# -*- test-case-name: tests.test_maildir -*-
"""
Durable delivery into Maildirs (the delivery side; POP3 reads them in
L{mailappliance.pop3.mailbox}).

Where a mailbox lives (SPEC section 3): C{<mail_root>/<domain>/<local>/},
from the lower-cased L{Mailbox.key}. Characters that are unsafe in a path
component (C{/}, C{\\}, NUL and other control characters, C{%} itself, and
a leading C{.}) are percent-encoded (C{%2F}, one escape per UTF-8 byte), so
every mailbox maps to a distinct folder strictly inside C{mail_root}.

A Maildir is a folder with C{tmp/}, C{new/} and C{cur/} (mode 0700). A
message is delivered the Maildir way (U{https://cr.yp.to/proto/maildir.html}),
made durable:

  1. write C{tmp/<unique>}: our C{Return-Path:}/C{Delivered-To:} prefix,
     then the spooled message, byte for byte (CRLF line ends, as received);
  2. fsync it;
  3. rename it to C{new/<unique>,S=<size>,W=<size>} (Maildir++ size
     fields: C{S=} the file size, C{W=} the RFC 822 size with CRLF line
     ends, the same number since the file has CRLF line ends);
  4. fsync C{new/} (batched with other deliveries: group commit).

Steps 1 to 3 are one job in the disk pool, and the Maildir's folders are
made sure of only on the first delivery to it (L{MaildirDelivery}
remembers the Maildirs it has made sure of): a delivery to a known Maildir
costs an open of the source, one C{open} in C{tmp/}, the writes, one
C{fsync}, the closes and the rename, nothing else. A Maildir an
administrator removed while the server runs shows as C{ENOENT} from the
open in C{tmp/} or from the rename; then it is made again and the delivery
tried once more.

The unique part is C{<sec>.M<usec>P<pid>Q<n>.<host>}: time, the process id
(read at each delivery, so it is right after twistd forks), a per-process
counter, and the host name with C{/}, C{:} and C{,} written as C{\\057},
C{\\072} and C{\\054} (so the name can be split at C{:} and C{,}).
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.address import Mailbox
from mailappliance.disk import (
    ensure_directory,
    fill_and_rename,
    fsync_directory,
    remove_old_files,
    write_all,
)
from mailappliance.interfaces import DeliveryError, ILocalDelivery

MAILDIR_SUBDIRECTORIES = ("cur", "new", "tmp")
DIRECTORY_MODE = 0o700
MESSAGE_MODE = 0o600
COPY_CHUNK_SIZE = 64 * 1024
# Maildirs a delivery remembers as existing; past this many the memory is
# cleared and refilled (one mkdir/stat round per Maildir again), so a
# server with very many mailboxes stays bounded.
MAX_REMEMBERED_MAILDIRS = 10_000
# Attempts at a fresh unique name if tmp/<unique> exists (it cannot, unless
# the clock steps back and a pid is reused; then just try again).
UNIQUE_NAME_ATTEMPTS = 5

# Errors that retrying later can cure (disk full, quota, I/O trouble,
# resource exhaustion, an administrator fixing permissions): the message
# stays queued. Anything else about the mailbox's path is permanent.
_PERMANENT_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG})

# The Maildir rule (https://cr.yp.to/proto/maildir.html): a file in tmp/
# untouched for 36 hours is the leftover of a delivery that died (a crash
# in the middle of a large message) and is removed. A delivery in
# progress writes its file at least every idle time-out (minutes).
STALE_TMP_SECONDS = 36 * 3600

_counter = itertools.count()
_counter_lock = threading.Lock()


def _escape_component(text: str) -> str:
    out = []
    for i, char in enumerate(text):
        code = ord(char)
        if char in "/\\%" or code < 0x20 or code == 0x7F or (i == 0 and char == "."):
            out.extend(f"%{b:02X}" for b in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)


def maildir_path(mail_root: str, mailbox: Mailbox) -> str:
    """
    The Maildir of a mailbox.

    @param mail_root: C{DATA_DIR/mail}.
    @param mailbox: the account's address.
    @return: C{<mail_root>/<domain>/<local>}, lower-cased, each component
        escaped as the module docstring says; always strictly inside
        C{mail_root}, two levels down.
    """
    local, _, domain = mailbox.key.rpartition("@")
    return os.path.join(mail_root, _escape_component(domain), _escape_component(local))


def ensure_maildir(path: str) -> None:
    """
    Create a Maildir (and its parents) if missing, durably: each folder
    created is made durable by fsyncing its parent; leftovers in C{tmp/}
    are removed (L{remove_stale_tmp}). Blocking.

    @param path: the Maildir.
    @raise OSError: if it cannot be created (C{NotADirectoryError} if a
        file is in the way).
    """
    ensure_directory(path, DIRECTORY_MODE)
    remove_stale_tmp(path)
    created = False
    for sub in MAILDIR_SUBDIRECTORIES:
        try:
            os.mkdir(os.path.join(path, sub), DIRECTORY_MODE)
            created = True
        except FileExistsError:
            if not os.path.isdir(os.path.join(path, sub)):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", os.path.join(path, sub))
    if created:
        fsync_directory(path)


def remove_stale_tmp(maildir: str, now: float | None = None) -> int:
    """
    Remove the files in C{tmp/} last modified more than
    L{STALE_TMP_SECONDS} ago. Blocking. A missing folder, and a file that
    vanishes meanwhile, are not errors.

    @param maildir: the Maildir.
    @param now: Unix time (the system clock by default).
    @return: how many files were removed.
    """
    return len(remove_old_files(os.path.join(maildir, "tmp"), STALE_TMP_SECONDS, now))


def _escape_host(hostname: str) -> str:
    return hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


def unique_name(hostname: str, now: Callable[[], float] = time.time) -> str:
    """
    A new Maildir unique name, C{<sec>.M<usec>P<pid>Q<n>.<host>}.
    Thread-safe.

    @param hostname: this host's name (escaped here).
    @param now: the clock, Unix time.
    """
    with _counter_lock:
        n = next(_counter)
    seconds = now()
    whole = int(seconds)
    micros = min(round((seconds - whole) * 1_000_000), 999_999)
    return f"{whole}.M{micros}P{os.getpid()}Q{n}.{_escape_host(hostname)}"


def deliver_file(maildir: str, prefix: bytes, source_path: str, hostname: str, body_size: int | None = None) -> str:
    """
    Deliver a message into an existing Maildir. Blocking; memory bounded
    (the source is copied in chunks of L{COPY_CHUNK_SIZE}).

    The prefix and the first chunk of the source go out in one C{write}
    (a message below L{COPY_CHUNK_SIZE} is one C{write}); the source is
    read with C{os} calls, not a buffered file, which would C{fstat} and
    C{lseek} it for nothing.

    @param maildir: the Maildir (with C{tmp/} and C{new/}).
    @param prefix: bytes written before the message (header lines).
    @param source_path: the file holding the message, copied byte for
        byte: no line-ending conversion.
    @param hostname: for the unique name.
    @param body_size: how many bytes of the source are the message (a
        queue file of layout version 2 goes on with its envelope, which
        must never reach a mailbox); L{None}: all of it, to its end. A
        source shorter than C{body_size} raises L{OSError} (C{EIO}): the
        queued message was damaged, and a truncated copy is not delivered.
    @return: the path of the delivered file in C{new/}. The file is
        fsynced; the caller makes C{new/} durable (fsync or group commit).
    @raise OSError: on any failure; no file is left in C{tmp/} or C{new/}.
        A missing source raises C{FileNotFoundError} whose C{filename} is
        C{source_path}, before anything is created.
    """
    source = os.open(source_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _deliver(maildir, hostname, lambda fd: _copy(fd, prefix, source, body_size))
    finally:
        os.close(source)


def deliver_data(maildir: str, prefix: bytes, data: bytes, hostname: str) -> str:
    """
    Deliver a message held in memory into an existing Maildir, as
    L{deliver_file} does from a file: one C{write} of prefix and message,
    fsync, rename into C{new/}. Blocking. For the queue manager's direct
    delivery of a small message (L{mailappliance.queue.direct}).

    @param maildir: the Maildir (with C{tmp/} and C{new/}).
    @param prefix: bytes written before the message (header lines).
    @param data: the message, byte for byte.
    @param hostname: for the unique name.
    @return: the path of the delivered file in C{new/}, fsynced; the
        caller makes C{new/} durable.
    @raise OSError: on any failure; no file is left in C{tmp/} or C{new/}.
    """

    def fill(fd: int) -> int:
        write_all(fd, prefix + data)
        return len(prefix) + len(data)

    return _deliver(maildir, hostname, fill)


def _unlink_if_present(path: str) -> bool:
    # A copy that a POP3 client or another program already moved is gone
    # from new/ anyway.
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _deliver(maildir: str, hostname: str, fill: Callable[[int], int]) -> str:
    # tmp/<unique>, filled by fill(fd) (which returns the size), fsynced,
    # closed and renamed into new/; removed again on any failure.
    fd, tmp, name = _create_tmp(maildir, hostname)
    _, final = fill_and_rename(fd, tmp, fill, lambda size: os.path.join(maildir, "new", f"{name},S={size},W={size}"))
    return final


def _copy(fd: int, prefix: bytes, source: int, limit: int | None = None) -> int:
    # The prefix, then the source to its end or to `limit` bytes, in
    # writes of at most COPY_CHUNK_SIZE; the prefix shares the first.
    # Returns the size.
    buffer = bytearray(COPY_CHUNK_SIZE)
    view = memoryview(buffer)
    size = 0
    if len(prefix) < COPY_CHUNK_SIZE:
        buffer[:len(prefix)] = prefix
        filled = len(prefix)
    else:
        write_all(fd, prefix)
        size = len(prefix)
        filled = 0
    left = limit
    while True:
        room = COPY_CHUNK_SIZE - filled if left is None else min(COPY_CHUNK_SIZE - filled, left)
        count = os.readv(source, [view[filled:filled + room]]) if room else 0
        filled += count
        if left is not None:
            left -= count
        if filled:
            write_all(fd, view[:filled])
            size += filled
        if not count:
            if left:
                raise OSError(errno.EIO, "queued message shorter than its envelope says")
            return size
        filled = 0


def _create_tmp(maildir: str, hostname: str) -> tuple[int, str, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    for attempt in range(UNIQUE_NAME_ATTEMPTS):
        name = unique_name(hostname)
        tmp = os.path.join(maildir, "tmp", name)
        try:
            return os.open(tmp, flags, MESSAGE_MODE), tmp, name
        except FileExistsError:
            if attempt == UNIQUE_NAME_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def classify_error(error: BaseException, body_path: str | None) -> DeliveryError:
    """
    Turn a delivery exception into a L{DeliveryError}.

    Permanent: the mailbox's path cannot be a Maildir (a file in the way, a
    symbolic-link loop, a name too long), or the spooled body is gone.
    Temporary: everything else, notably C{ENOSPC}, C{EDQUOT}, C{EIO},
    C{EACCES}: the message stays queued and is tried again.

    @param error: what L{deliver_file} or L{ensure_maildir} raised.
    @param body_path: the spooled body, to recognise its loss (L{None}
        for a message delivered from memory).
    """
    if isinstance(error, OSError):
        text = error.strerror or str(error)
        if error.filename:
            text = f"{text}: {error.filename}"
        if error.errno == errno.ENOENT and body_path is not None and error.filename == body_path:
            return DeliveryError(f"queued message body missing ({text})", permanent=True)
        return DeliveryError(f"cannot deliver to Maildir: {text}", permanent=error.errno in _PERMANENT_ERRNOS)
    return DeliveryError(f"cannot deliver to Maildir: {error!r}", permanent=False)


def deliver_to_maildir(
    maildir: str,
    prefix: bytes,
    source_path: str | None,
    hostname: str,
    known: bool,
    body_size: int | None = None,
    data: bytes | None = None,
) -> str:
    """
    Deliver a message into a Maildir, making it first unless it is known
    to exist. Blocking.

    @param maildir: the Maildir.
    @param prefix: as for L{deliver_file}.
    @param source_path: as for L{deliver_file}; L{None} with C{data}.
    @param hostname: as for L{deliver_file}.
    @param body_size: as for L{deliver_file}.
    @param data: the message itself (L{deliver_data}) instead of a file.
    @param known: L{True} if the Maildir was made or seen before: its
        folders are not checked first. If it has gone since (an
        administrator removed it: C{ENOENT} from C{tmp/} or C{new/}), it
        is made again and the delivery tried once more.
    @return: as for L{deliver_file}.
    @raise OSError: as L{ensure_maildir} and L{deliver_file} raise; a
        missing source is never taken for a missing Maildir.
    """

    def once() -> str:
        if data is not None:
            return deliver_data(maildir, prefix, data, hostname)
        assert source_path is not None
        return deliver_file(maildir, prefix, source_path, hostname, body_size)

    if not known:
        ensure_maildir(maildir)
        return once()
    try:
        return once()
    except FileNotFoundError as e:
        if data is None and e.filename == source_path:
            raise
    ensure_maildir(maildir)
    return once()


@implementer(ILocalDelivery)
class MaildirDelivery:
    """
    L{ILocalDelivery} into C{<mail_root>/<domain>/<local>/}.

    It remembers the Maildirs it has delivered to (up to
    L{MAX_REMEMBERED_MAILDIRS}), so that only the first delivery to each
    makes sure of its folders (see L{deliver_to_maildir} for one removed
    behind its back). A failed delivery forgets its Maildir.
    """

    def __init__(self, mail_root: str, hostname: str, disk: Any, syncer: Any) -> None:
        """
        @param mail_root: C{DATA_DIR/mail}.
        @param hostname: for unique names.
        @param disk: the disk pool.
        @param syncer: a L{mailappliance.disk.DirectorySyncer}, to batch
            the fsyncs of C{new/} folders.
        """
        self.mail_root = os.path.abspath(mail_root)
        self.hostname = hostname
        self.disk = disk
        self.syncer = syncer
        # Reactor thread only: Maildirs known to exist.
        self._known: set[str] = set()

    def deliver(self, mailbox: Mailbox, prefix: bytes, body_path: str, body_size: int | None = None) -> Deferred:
        """
        See L{ILocalDelivery.deliver}. Creates the Maildir on first
        delivery, and again if it was removed since.

        @return: a L{Deferred} firing with the delivered file's path once
            file and C{new/} are durable, or failing with L{DeliveryError}.
            If only the final fsync of C{new/} fails, the file stays (it
            may be read) and the failure is temporary: a retry delivers a
            second copy, never none.
        """
        return self._deliver(mailbox, prefix, body_path, body_size, None)

    def open_stream(self, mailbox: Mailbox, prefix: bytes) -> MaildirStream:
        """
        See L{ILocalDelivery.open_stream}: a message written into the
        Maildir as it arrives.
        """
        return MaildirStream(self, mailbox, prefix)

    def deliver_data(self, mailbox: Mailbox, prefix: bytes, data: bytes) -> Deferred:
        """
        See L{ILocalDelivery.deliver_data}: as L{deliver}, with the message
        given in memory.
        """
        return self._deliver(mailbox, prefix, None, None, data)

    def withdraw(self, path: str) -> Deferred:
        """
        See L{ILocalDelivery.withdraw}.
        """
        d = self.disk.run(_unlink_if_present, path)
        d.addCallback(lambda removed: self.syncer.sync(os.path.dirname(path)) if removed else None)
        return d

    def _deliver(
        self, mailbox: Mailbox, prefix: bytes, body_path: str | None, body_size: int | None, data: bytes | None
    ) -> Deferred:
        path = maildir_path(self.mail_root, mailbox)
        known = path in self._known

        def failed(reason: Failure) -> Failure:
            self._known.discard(path)
            if reason.check(DeliveryError):
                return reason
            return Failure(classify_error(reason.value, body_path))

        d = self.disk.run(deliver_to_maildir, path, prefix, body_path, self.hostname, known, body_size, data)
        d.addCallback(self._published, path)
        d.addErrback(failed)
        return d

    def _published(self, final: str, path: str) -> Deferred:
        # A file is in path's new/: remember the Maildir, make new/ durable.
        if path not in self._known:
            if len(self._known) >= MAX_REMEMBERED_MAILDIRS:
                self._known.clear()
            self._known.add(path)
        d = self.syncer.sync(os.path.join(path, "new"))
        d.addCallback(lambda _: final)
        return d


class MaildirStream:
    """
    A message written into a Maildir as it arrives (the direct delivery
    of a message too large to hold in memory, L{mailappliance.queue.writer}):
    C{tmp/<unique>} is created at the first write, with the prefix, and
    published into C{new/} by L{finish_blocking} and L{published}, the same
    steps as L{deliver_file}.

    The C{_blocking} methods run in the disk pool, one at a time (the
    writer's jobs are serial); L{published} on the reactor thread.

    @ivar size: bytes written so far, prefix included.
    """

    def __init__(self, delivery: MaildirDelivery, mailbox: Mailbox, prefix: bytes) -> None:
        self.mailbox = mailbox
        self.size = 0
        self._delivery = delivery
        self._prefix = prefix
        self._path = maildir_path(delivery.mail_root, mailbox)
        self._known = self._path in delivery._known
        self._fd: int | None = None
        self._tmp: str | None = None
        self._name = ""

    def write_blocking(self, data: bytes) -> None:
        """
        Append to the message (the first call creates the file and writes
        the prefix in the same C{write}).
        """
        if self._fd is None:
            self._open_blocking()
            data = self._prefix + data
        write_all(self._fd, data)
        self.size += len(data)

    def _open_blocking(self) -> None:
        if not self._known:
            ensure_maildir(self._path)
        try:
            self._fd, self._tmp, self._name = _create_tmp(self._path, self._delivery.hostname)
        except FileNotFoundError:
            # Removed by an administrator since it was last seen.
            ensure_maildir(self._path)
            self._fd, self._tmp, self._name = _create_tmp(self._path, self._delivery.hostname)

    def finish_blocking(self) -> str:
        """
        fsync the file, close it and rename it into C{new/}.

        @return: the path in C{new/}. The caller makes C{new/} durable
            (L{published}).
        @raise OSError: on failure; nothing is left in C{tmp/} or C{new/}.
        """
        if self._fd is None:
            self.write_blocking(b"")
        assert self._fd is not None and self._tmp is not None
        fd, self._fd = self._fd, None
        tmp, self._tmp = self._tmp, None
        _, final = fill_and_rename(fd, tmp, lambda fd: self.size,
                                   lambda size: os.path.join(self._path, "new", f"{self._name},S={size},W={size}"))
        return final

    def discard_blocking(self) -> None:
        """
        Give the message up: close and remove C{tmp/<unique>}. Idempotent.
        """
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        if self._tmp is not None:
            tmp, self._tmp = self._tmp, None
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def published(self, final: str) -> Deferred:
        """
        After L{finish_blocking}: make C{new/} durable (group commit).

        @return: a L{Deferred} firing with C{final}.
        """
        return self._delivery._published(final, self._path)
