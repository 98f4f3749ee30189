# -*- test-case-name: tests.test_cli_sendmail -*-
"""
The drop folder C{DATA_DIR/queue/incoming/}: how C{mailappliance sendmail}
hands mail to the server, even while the server is stopped.

A drop file is written by L{write_drop} (blocking; the CLI has no reactor):
to a temporary name starting with C{.}, fsynced, renamed to
C{<time>-<random>.msg}, and the folder fsynced, so the server never sees a
half-written file and a drop acknowledged by exit status 0 survives a
crash. Format, version 1: one line of JSON, CRLF, then the message with
CRLF line ends::

  {"version": 1, "sender": "root@host.example" | "", "recipients": ["a@b", ...],
   "uid": 0, "user": "root", "time": 1700000000.0}\\r\\n
  From: ...\\r\\n
  ...

The server's L{DropFolder} looks at the folder every second, queues each
drop through the normal path (L{mailappliance.queue.inject}: recipients
resolved, C{Received:} added, committed durably) and only then removes the
drop file. Recipients that cannot be resolved are queued as failed, so the
sender gets a bounce, as with any other mail. A crash between the commit
and the removal queues the message twice (the duplicate window of this
path). A drop that cannot be read as version 1 is moved to
C{queue/corrupt/} with a log line. A hidden temporary file older than
L{STALE_TEMPORARY_AGE} is what a C{sendmail} that died while writing left
behind; the server removes it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailappliance.address import AddressError, Mailbox, parse_mailbox
from mailappliance.disk import (
    fill_and_rename,
    fsync_directory,
    remove_old_files,
    write_all,
)
from mailappliance.logtext import quote

DROP_VERSION = 1
DROP_SUFFIX = ".msg"
MAX_DROP_HEADER = 1024 * 1024
TEMPORARY_SUFFIX = ".tmp"
# write_drop writes the message it holds in one go: a temporary file this
# old belongs to a sendmail that died.
STALE_TEMPORARY_AGE = 3600

_default_log = Logger(namespace="mailappliance.queue")


class DropFormatError(ValueError):
    """
    A drop file is not a readable version-1 drop.
    """


@dataclass(frozen=True)
class Drop:
    sender: Mailbox | None
    recipients: tuple[Mailbox, ...]
    user: str
    uid: int
    time: float
    message: bytes


def write_drop(incoming_dir: str, sender: Mailbox | None, recipients: list[Mailbox], message: bytes,
               user: str, uid: int, now: float | None = None) -> str:
    """
    Write a drop file durably (blocking).

    @param message: the message with CRLF line ends.
    @return: the drop file's path.
    @raise OSError: if it cannot be written.
    """
    now = time.time() if now is None else now
    header = json.dumps({
        "version": DROP_VERSION,
        "sender": str(sender) if sender is not None else "",
        "recipients": [str(r) for r in recipients],
        "uid": uid,
        "user": user,
        "time": now,
    }, ensure_ascii=False).encode("utf-8")
    name = f"{int(now * 1000):015d}-{secrets.token_hex(6)}{DROP_SUFFIX}"
    tmp = os.path.join(incoming_dir, "." + name + TEMPORARY_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def fill(fd: int) -> None:
        write_all(fd, header + b"\r\n")
        write_all(fd, message)

    _, final = fill_and_rename(fd, tmp, fill, lambda _: os.path.join(incoming_dir, name))
    fsync_directory(incoming_dir)
    return final


def parse_drop(data: bytes) -> Drop:
    """
    @raise DropFormatError: if C{data} is not a version-1 drop.
    """
    end = data.find(b"\r\n", 0, MAX_DROP_HEADER)
    if end < 0:
        raise DropFormatError("no header line")
    try:
        header = json.loads(data[:end].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DropFormatError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict) or header.get("version") != DROP_VERSION:
        raise DropFormatError("not a version-1 drop")
    try:
        sender_text = header["sender"]
        recipients = tuple(parse_mailbox(r) for r in header["recipients"])
        if not recipients:
            # sendmail never writes one; retrying it would fail for ever.
            raise DropFormatError("no recipients")
        return Drop(
            sender=parse_mailbox(sender_text) if sender_text else None,
            recipients=recipients,
            user=str(header.get("user", "")),
            uid=int(header.get("uid", -1)),
            time=float(header.get("time", 0.0)),
            message=data[end + 2:],
        )
    except (KeyError, TypeError, ValueError, AddressError) as e:
        raise DropFormatError(f"bad header: {e}") from None


def list_drops(incoming_dir: str) -> list[str]:
    """
    The complete drop files waiting, oldest first (blocking).
    """
    try:
        names = os.listdir(incoming_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(DROP_SUFFIX) and not n.startswith("."))


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(DROP_SUFFIX + TEMPORARY_SUFFIX)


def scan_drops(incoming_dir: str, now: float | None = None) -> tuple[list[str], list[str]]:
    """
    Remove the stale temporary files (see the module docstring), then list
    the drops (blocking).

    @return: the names of the complete drops waiting, oldest first, and the
        paths of the temporary files removed.
    """
    removed = remove_old_files(incoming_dir, STALE_TEMPORARY_AGE, now, _is_temporary)
    return list_drops(incoming_dir), removed


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class DropFolder:
    """
    Imports drop files into the queue (see the module docstring).

    @param importer: a callable C{(drop) -> Deferred} that queues the
        message (see L{mailappliance.queue.inject.inject}).
    """

    def __init__(self, incoming_dir: str, corrupt_dir: str, disk: Any, importer: Any,
                 log: Logger | None = None) -> None:
        self.incoming_dir = incoming_dir
        self.corrupt_dir = corrupt_dir
        self.disk = disk
        self.importer = importer
        self.log = log if log is not None else _default_log
        self._busy = False

    @defer.inlineCallbacks
    def poll(self):
        """
        Import every drop waiting. Never fails; one poll at a time.
        """
        if self._busy:
            return 0
        self._busy = True
        imported = 0
        try:
            names, removed = yield self.disk.run(scan_drops, self.incoming_dir)
            for path in removed:
                self.log.info("file=incoming/{name} status=removed reason=\"temporary file of a sendmail never finished\"",
                              name=os.path.basename(path))
            for name in names:
                path = os.path.join(self.incoming_dir, name)
                try:
                    data = yield self.disk.run(_read, path)
                except FileNotFoundError:
                    continue
                try:
                    drop = parse_drop(data)
                except DropFormatError as e:
                    yield self.disk.run(os.rename, path, os.path.join(self.corrupt_dir, name))
                    self.log.error("file=incoming/{name} status=corrupt reason={reason} moved_to=corrupt/",
                                   name=name, reason=quote(str(e)))
                    continue
                try:
                    envelope = yield self.importer(drop)
                except Exception as e:
                    # Leave the drop for the next poll (a full disk, a
                    # resolver that is down).
                    self.log.error("file=incoming/{name} status=deferred reason={reason}", name=name,
                                   reason=quote(str(e) or type(e).__name__))
                    break
                yield self.disk.run(_unlink_and_sync, path, self.incoming_dir)
                imported += 1
                self.log.info("qid={qid} status=picked-up file=incoming/{name} user={user} uid={uid}",
                              qid=envelope.queue_id, name=name, user=drop.user, uid=drop.uid)
        except Exception:
            self.log.failure("event=incoming status=error")
        finally:
            self._busy = False
        return imported


def _unlink_and_sync(path: str, directory: str) -> None:
    os.unlink(path)
    fsync_directory(directory)
