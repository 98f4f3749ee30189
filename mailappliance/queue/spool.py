# -*- test-case-name: tests.test_queue_spool -*-
"""
The durable on-disk queue: L{Spool}, the single source of truth for every
message the server has accepted.

Layout of C{DATA_DIR/queue/}, version 1::

  tmp/                 work in progress; everything here is garbage at
                       start-up (a crash interrupted it):
    <qid>                body being received
    <qid>.env            envelope of a commit in progress
    <qid>.env.<n>        envelope rewrite in progress (L{Spool.update})
  messages/            committed messages:
    <qid>                the body, exactly as received (CRLF line ends,
                         starting with our Received: header)
    <qid>.env            the envelope (L{mailappliance.queue.envelope},
                         JSON, itself versioned); its presence is the
                         commit point
  corrupt/             envelopes that could not be read at start-up, moved
                       here with their bodies (and a log line) for the
                       administrator to inspect
  incoming/            reserved for a later sendmail drop folder; created,
                       otherwise left alone

Queue ids are made by L{mailappliance.queue.ids} (16 characters of base32,
sortable by time). All files are mode 0600, directories 0700.

Rules that keep this crash-safe (a SIGKILL or power loss at any instant):

  - a file is fsynced before it is renamed into C{messages/}, and
    C{messages/} is fsynced before anyone is told the change happened;
  - a message is committed by renaming its body and then its envelope
    into C{messages/}; it is removed by unlinking its envelope and then its
    body. So a body without an envelope is always garbage, and L{recover}
    removes it;
  - an envelope is rewritten by renaming a complete, fsynced copy over it,
    so it is always either the old or the new version.

Every blocking call runs in the disk pool; this module never touches the
file system on the reactor thread.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.disk import ensure_directory, fsync_directory, write_all
from mailappliance.interfaces import ISpool
from mailappliance.queue.envelope import Envelope, EnvelopeFormatError
from mailappliance.queue.ids import QueueIdGenerator, is_queue_id
from mailappliance.queue.writer import BODY_MODE, SpoolWriter

LAYOUT_VERSION = 1
ENVELOPE_SUFFIX = ".env"
SUBDIRECTORIES = ("tmp", "messages", "corrupt", "incoming")

_default_log = Logger(namespace="mailappliance.queue")


@dataclass(frozen=True)
class _Event:
    """
    Something recovery did, logged once back on the reactor thread (the
    disk pool's threads do not log).
    """

    status: str
    name: str
    reason: str = ""


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    return f'"{escaped}"'


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@implementer(ISpool)
class Spool:
    """
    The queue directory: receives new messages, rewrites and removes
    envelopes, and recovers the queue at start-up.

    @ivar on_commit: L{None}, or a callable given each newly committed
        L{Envelope} once it is durable (the queue manager sets it, so that
        the SMTP server needs to know only the spool). Its exceptions are
        logged, not propagated: the message is already accepted.
    @ivar disk: the disk pool (C{run(f, *args) -> Deferred}).
    @ivar syncer: the L{mailappliance.disk.DirectorySyncer}.
    """

    def __init__(self, queue_dir: str, disk: Any, syncer: Any, clock: Any, log: Logger | None = None) -> None:
        """
        @param queue_dir: C{DATA_DIR/queue}; created by L{recover} if missing.
        @param disk: the disk pool.
        @param syncer: a L{mailappliance.disk.DirectorySyncer} on C{disk}.
        @param clock: provides C{seconds()}, for queue ids.
        @param log: the L{Logger} to use.
        """
        self.queue_dir = os.path.abspath(queue_dir)
        self.tmp_dir = os.path.join(self.queue_dir, "tmp")
        self.messages_dir = os.path.join(self.queue_dir, "messages")
        self.corrupt_dir = os.path.join(self.queue_dir, "corrupt")
        self.incoming_dir = os.path.join(self.queue_dir, "incoming")
        self.disk = disk
        self.syncer = syncer
        self.clock = clock
        self.log = log if log is not None else _default_log
        self.on_commit: Any = None
        self._ids = QueueIdGenerator(clock)
        # Queue ids of writers of this process that have not finished:
        # recovery must not take their files for crash leftovers. Read
        # from the disk pool, changed only on the reactor thread.
        self._live: set[str] = set()
        self._rewrites = itertools.count()

    # -- receiving ---------------------------------------------------------

    def new_message(self) -> SpoolWriter:
        """
        @return: a new L{SpoolWriter} (an L{IMessageWriter}) with a fresh
            queue id.
        """
        queue_id = self._ids.next_id()
        self._live.add(queue_id)
        return SpoolWriter(self, queue_id)

    def _writer_finished(self, queue_id: str) -> None:
        self._live.discard(queue_id)

    def _committed(self, envelope: Envelope) -> None:
        if self.on_commit is None:
            return
        try:
            self.on_commit(envelope)
        except Exception:  # noqa: BLE001 -- the message is durable; a consumer bug must not fail it
            self.log.failure("qid={qid} status=error reason=\"on_commit failed\"", qid=envelope.queue_id)

    def _commit_failed(self, queue_id: str, reason: Failure) -> None:
        self.log.error(
            "qid={qid} status=error reason={reason}", qid=queue_id, reason=_quote(f"commit failed: {reason.value}")
        )

    def _discard_failed(self, queue_id: str, reason: Failure) -> None:
        self.log.error(
            "qid={qid} status=error reason={reason}",
            qid=queue_id,
            reason=_quote(f"discarding an aborted message failed: {reason.value}"),
        )

    # -- paths -------------------------------------------------------------

    def body_path(self, queue_id: str) -> str:
        """
        @param queue_id: a queue id.
        @return: the path of the committed body, C{messages/<qid>}.
        @raise ValueError: if C{queue_id} is not a queue id (so a
            command-line argument cannot name a file outside the queue).
        """
        if not is_queue_id(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        return os.path.join(self.messages_dir, queue_id)

    def envelope_path(self, queue_id: str) -> str:
        """
        @return: the path of the committed envelope, C{messages/<qid>.env}.
        @raise ValueError: as L{body_path}.
        """
        return self.body_path(queue_id) + ENVELOPE_SUFFIX

    # -- changing committed messages ---------------------------------------

    def update(self, envelope: Envelope) -> Deferred:
        """
        Durably replace a committed message's envelope (new recipient
        states): write C{tmp/<qid>.env.<n>}, fsync it, rename it over
        C{messages/<qid>.env}, then fsync C{messages/} (group commit).

        @param envelope: the new envelope.
        @return: a L{Deferred} firing with L{None} once durable, or failing
            with the L{OSError} (C{FileNotFoundError} if the message is no
            longer in the queue); the old envelope is then intact.
        """
        queue_id = envelope.queue_id
        target = self.envelope_path(queue_id)
        body = self.body_path(queue_id)
        tmp = os.path.join(self.tmp_dir, f"{queue_id}{ENVELOPE_SUFFIX}.{next(self._rewrites)}")
        d = self.disk.run(_rewrite_blocking, tmp, target, body, envelope.to_bytes())
        d.addCallback(lambda _: self.syncer.sync(self.messages_dir))
        return d

    def remove(self, queue_id: str) -> Deferred:
        """
        Remove a message: unlink its envelope, then its body, then fsync
        C{messages/} (group commit). Missing files are not an error.

        @return: a L{Deferred} firing with L{None} once durable.
        """
        envelope = self.envelope_path(queue_id)
        body = self.body_path(queue_id)

        def unlink() -> None:
            _unlink_quietly(envelope)
            _unlink_quietly(body)

        d = self.disk.run(unlink)
        d.addCallback(lambda _: self.syncer.sync(self.messages_dir))
        return d

    def load(self, queue_id: str) -> Deferred:
        """
        Read a committed envelope.

        @return: a L{Deferred} firing with the L{Envelope}, or failing with
            L{OSError} or L{EnvelopeFormatError}.
        """
        path = self.envelope_path(queue_id)

        def read() -> Envelope:
            with open(path, "rb") as f:
                return Envelope.from_bytes(f.read())

        return self.disk.run(read)

    # -- start-up ----------------------------------------------------------

    def recover(self) -> Deferred:
        """
        Bring the queue directory to a clean state after a start or a
        crash, in the disk pool: create the folders, empty C{tmp/}, remove
        bodies without an envelope, move unreadable envelopes (and their
        bodies) and envelopes without a body to C{corrupt/}. Files of
        messages this process is receiving right now are left alone.

        The server must be the only process doing this: the command line
        reads the queue but never recovers it.

        @return: a L{Deferred} firing with the committed envelopes, a
            L{list} of L{Envelope} sorted by arrival (then queue id).
        """
        d = self.disk.run(self._recover_blocking)

        def report(result: tuple[list[Envelope], list[_Event]]) -> list[Envelope]:
            envelopes, events = result
            for event in events:
                stem = os.path.basename(event.name).split(".", 1)[0]
                # The queue id first, when the file has one, so that
                # grepping for it finds this line too.
                where = f"qid={stem} file={event.name}" if is_queue_id(stem) else f"file={event.name}"
                if event.status == "corrupt":
                    self.log.error(
                        "{where} status=corrupt reason={reason} moved_to={corrupt}",
                        where=where,
                        reason=_quote(event.reason),
                        corrupt=self.corrupt_dir,
                    )
                else:
                    self.log.info(
                        "{where} status={status} reason={reason}",
                        where=where,
                        status=event.status,
                        reason=_quote(event.reason),
                    )
            self.log.info("event=recover status=done messages={count}", count=len(envelopes))
            return envelopes

        d.addCallback(report)
        return d

    def _recover_blocking(self) -> tuple[list[Envelope], list[_Event]]:
        for sub in SUBDIRECTORIES:
            ensure_directory(os.path.join(self.queue_dir, sub))
        events: list[_Event] = []
        for entry in _scan(self.tmp_dir):
            if entry.name.split(".", 1)[0] in self._live or not entry.is_file(follow_symlinks=False):
                continue
            _unlink_quietly(entry.path)
            events.append(_Event("discarded", os.path.join("tmp", entry.name), "incomplete at start-up"))

        names = {
            entry.name
            for entry in _scan(self.messages_dir)
            if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)
        }
        envelopes: list[Envelope] = []
        moved = False
        for name in sorted(names):
            if name.endswith(ENVELOPE_SUFFIX):
                stem = name[: -len(ENVELOPE_SUFFIX)]
                if stem in self._live:
                    continue
                envelope, problem = self._read_envelope(name, stem, stem in names)
                if envelope is not None:
                    envelopes.append(envelope)
                    continue
                self._move_to_corrupt(name)
                if stem in names:
                    self._move_to_corrupt(stem)
                moved = True
                events.append(_Event("corrupt", os.path.join("messages", name), problem))
            elif name + ENVELOPE_SUFFIX not in names and name not in self._live:
                _unlink_quietly(os.path.join(self.messages_dir, name))
                events.append(_Event("discarded", os.path.join("messages", name), "body without envelope"))
        if moved:
            fsync_directory(self.corrupt_dir)
        if events:
            fsync_directory(self.messages_dir)
        envelopes.sort(key=lambda e: (e.arrival, e.queue_id))
        return envelopes, events

    def _read_envelope(self, name: str, stem: str, has_body: bool) -> tuple[Envelope | None, str]:
        try:
            with open(os.path.join(self.messages_dir, name), "rb") as f:
                envelope = Envelope.from_bytes(f.read())
        except EnvelopeFormatError as e:
            return None, f"unreadable envelope: {e}"
        except OSError as e:
            return None, f"cannot read envelope: {e.strerror}"
        if envelope.queue_id != stem or not is_queue_id(stem):
            return None, f"envelope names queue id {envelope.queue_id!r}"
        if not has_body:
            return None, "envelope without body"
        return envelope, ""

    def _move_to_corrupt(self, name: str) -> None:
        target = os.path.join(self.corrupt_dir, name)
        for n in itertools.count(1):
            if not os.path.lexists(target):
                break
            target = os.path.join(self.corrupt_dir, f"{name}.{n}")
        os.rename(os.path.join(self.messages_dir, name), target)


def _scan(directory: str) -> list[os.DirEntry]:
    with os.scandir(directory) as it:
        return list(it)


def _rewrite_blocking(tmp: str, target: str, body: str, data: bytes) -> None:
    if not os.path.exists(body):
        # Writing the envelope now would resurrect a removed message as an
        # envelope without a body.
        raise FileNotFoundError(2, "message is not in the queue", body)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, BODY_MODE)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
