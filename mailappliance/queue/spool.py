# -*- test-case-name: tests.test_queue_spool -*-
"""
The durable on-disk queue: L{Spool}, the single source of truth for every
message the server has accepted.

Layout of C{DATA_DIR/queue/}, version 2 (written since issue 8; version 1
is still read, see below)::

  tmp/                 work in progress; everything here is garbage at
                       start-up (a crash interrupted it):
    <qid>                queue file being received
    <qid>.env.<n>        envelope rewrite in progress (L{Spool.update})
  messages/            committed messages:
    <qid>                the queue file (L{mailappliance.queue.layout}):
                         the body, exactly as received (CRLF line ends,
                         starting with our Received: header), exactly
                         C{envelope.size} bytes; then the envelope as it
                         was at the commit (L{mailappliance.queue.envelope},
                         JSON, itself versioned); then a 25-byte trailer
                         C{MAQ2 <10-digit length> <8-hex CRC-32>\\n} that
                         locates and checks the envelope. Its appearance
                         (a rename) is the commit point.
    <qid>.env            only once the envelope has changed (recipient
                         outcomes, L{Spool.update}): the current envelope,
                         which supersedes the embedded one; the body is
                         still the first C{size} bytes of C{<qid>}
  corrupt/             queue files and envelopes that could not be read
                       at start-up, moved here (and a log line) for the
                       administrator to inspect
  incoming/            the sendmail drop folder (L{mailappliance.queue.incoming})

Version 1 (before issue 8) differs only in C{messages/}: C{<qid>} is the
body alone, C{<qid>.env} always exists and its appearance (renamed in
after the body) was the commit point. A version-1 queue left by an older
run is read as it is: a C{<qid>} with a C{<qid>.env} is a message in
either version, and readers stop at C{envelope.size} in both.

Queue ids are made by L{mailappliance.queue.ids} (16 characters of base32,
sortable by time). All files are mode 0600, directories 0700.

Rules that keep this crash-safe (a SIGKILL or power loss at any instant):

  - a file is fsynced before it is renamed into C{messages/}, and
    C{messages/} is fsynced before anyone is told the change happened
    (the 250 reply, a delivery's or a removal's completion);
  - commit: the complete queue file (body, envelope, trailer) is written
    to C{tmp/<qid>}, fsynced, and renamed to C{messages/<qid>}. Before the
    rename, only C{tmp/} holds anything, which recovery empties; after
    it, the whole file is there, since it was fsynced first. A
    C{messages/<qid>} without C{.env} and without a valid trailer is
    therefore never a version-2 commit as we wrote it: a version-1 body
    whose envelope never arrived, a file whose end was damaged behind our
    back, or someone else's file. Whatever it is, it is moved to
    C{corrupt/} and logged (an error), never deleted: the administrator
    decides;
  - update: an envelope is rewritten by renaming a complete, fsynced copy
    over C{<qid>.env}, so it is always either the old or the new version;
    until the first rename lands, the embedded envelope is the current
    one;
  - removal: C{<qid>.env} is unlinked (if the message has one) before
    C{<qid>}, then C{messages/} is fsynced. A crash between the two
    unlinks leaves C{<qid>} alone, which recovery takes for the message
    with its envelope as committed: recipients already delivered are
    delivered again. That duplicate (RFC 5321 section 6.1 accepts
    duplicates, never losses) is the price of never leaving an envelope
    without a body, which would be ambiguous with damage (version 1 has
    the same window the other way round: a body without an envelope,
    moved to C{corrupt/}). The opposite order would need recovery to drop C{.env}
    files without a body silently, hiding real damage.

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
from mailappliance.logtext import quote
from mailappliance.queue.envelope import Envelope, EnvelopeFormatError
from mailappliance.queue.ids import QueueIdGenerator, is_queue_id
from mailappliance.queue.layout import CorruptTrailer, NoTrailer, read_embedded_envelope
from mailappliance.queue.writer import BODY_MODE, SpoolWriter

LAYOUT_VERSION = 2
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
    @ivar on_direct: L{None}, or a callable C{(envelope, body) ->
        Deferred | None} that may deliver a small message before it is
        queued (the queue manager's
        L{mailappliance.queue.manager.QueueManager.deliver_direct}); see
        L{mailappliance.queue.writer.SpoolWriter.commit}.
    @ivar on_stream: L{None}, or a callable C{(sender, recipients) ->
        stream | None} that may take a body too large to hold in memory
        straight into a Maildir (the queue manager's
        L{mailappliance.queue.manager.QueueManager.stream_direct}).
    @ivar on_streamed: with C{on_stream}, a callable C{(envelope, path)}
        told of each message delivered that way.
    @ivar on_withdraw: with C{on_direct}, a callable C{(queue_id) ->
        Deferred} called when a message C{on_direct} delivered in part
        could not be queued (the client is refused and sends it again):
        it takes the copies back, so that the next attempt does not
        duplicate them.
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
        self.on_direct: Any = None
        self.on_stream: Any = None
        self.on_streamed: Any = None
        self.on_withdraw: Any = None
        self._ids = QueueIdGenerator(clock)
        # Queue ids of writers of this process that have not finished:
        # recovery must not take their files for crash leftovers. Read
        # from the disk pool, changed only on the reactor thread.
        self._live: set[str] = set()
        self._rewrites = itertools.count()
        # Queue ids whose message has (or may have) a messages/<qid>.env:
        # only these cost an unlink of it at removal. Known from recovery
        # and from update(); the command line changes the queue files only
        # while no server runs. Reactor thread only.
        self._envelope_files: set[str] = set()

    # -- receiving ---------------------------------------------------------

    def new_message(self, expected: tuple[Any, tuple] | None = None) -> SpoolWriter:
        """
        @param expected: C{(sender, recipients)} of the envelope to come,
            when known before the body (see L{SpoolWriter}).
        @return: a new L{SpoolWriter} (an L{IMessageWriter}) with a fresh
            queue id.
        """
        queue_id = self._ids.next_id()
        self._live.add(queue_id)
        return SpoolWriter(self, queue_id, expected)

    def _streamed(self, envelope: Envelope, path: str) -> None:
        if self.on_streamed is None:
            return
        try:
            self.on_streamed(envelope, path)
        except Exception:  # noqa: BLE001 -- the message is delivered; a consumer bug must not fail it
            self.log.failure("qid={qid} status=error reason=\"on_streamed failed\"", qid=envelope.queue_id)

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
            "qid={qid} status=error reason={reason}", qid=queue_id, reason=quote(f"commit failed: {reason.value}")
        )

    def _direct_failed(self, queue_id: str, reason: Failure) -> None:
        self.log.failure(
            "qid={qid} status=error reason=\"direct delivery failed; queued\"", reason, qid=queue_id
        )

    def _stream_fell_back(self, queue_id: str, reason: Failure) -> None:
        self.log.info("qid={qid} status=queueing reason={reason}", qid=queue_id,
                      reason=quote(f"cannot write into the Maildir: {reason.getErrorMessage()}"))

    def _withdraw_failed(self, queue_id: str, reason: Failure) -> None:
        self.log.failure("qid={qid} status=error reason=\"withdrawing delivered copies failed\"", reason,
                         qid=queue_id)

    def _discard_failed(self, queue_id: str, reason: Failure) -> None:
        self.log.error(
            "qid={qid} status=error reason={reason}",
            qid=queue_id,
            reason=quote(f"discarding an aborted message failed: {reason.value}"),
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
        @return: the path of the rewritten envelope, C{messages/<qid>.env}
            (present for a version-2 message only once L{update}d).
        @raise ValueError: as L{body_path}.
        """
        return self.body_path(queue_id) + ENVELOPE_SUFFIX

    # -- changing committed messages ---------------------------------------

    def update(self, envelope: Envelope) -> Deferred:
        """
        Durably replace a committed message's envelope (new recipient
        states): write C{tmp/<qid>.env.<n>}, fsync it, rename it over
        C{messages/<qid>.env} (which from then on supersedes the envelope
        embedded in the queue file), then fsync C{messages/} (group
        commit).

        @param envelope: the new envelope.
        @return: a L{Deferred} firing with L{None} once durable, or failing
            with the L{OSError} (C{FileNotFoundError} if the message is no
            longer in the queue); the old envelope is then intact.
        """
        queue_id = envelope.queue_id
        target = self.envelope_path(queue_id)
        body = self.body_path(queue_id)
        tmp = os.path.join(self.tmp_dir, f"{queue_id}{ENVELOPE_SUFFIX}.{next(self._rewrites)}")
        # Before the job: a removal after it must unlink the file even if
        # this update fails half-way. (An update of a message already
        # removed leaves its id here until the next start: harmless.)
        self._envelope_files.add(queue_id)
        d = self.disk.run(_rewrite_blocking, tmp, target, body, envelope.to_bytes())
        d.addCallback(lambda _: self.syncer.sync(self.messages_dir))
        return d

    def remove(self, queue_id: str) -> Deferred:
        """
        Remove a message: unlink its C{.env} if it has one, then its
        queue file, then fsync C{messages/} (group commit). Missing files
        are not an error. A message never updated has no C{.env}, so that
        costs one unlink (the order is explained in the module docstring).

        @return: a L{Deferred} firing with L{None} once durable.
        """
        envelope = self.envelope_path(queue_id) if queue_id in self._envelope_files else None
        body = self.body_path(queue_id)
        self._envelope_files.discard(queue_id)

        def unlink() -> None:
            if envelope is not None:
                _unlink_quietly(envelope)
            _unlink_quietly(body)

        d = self.disk.run(unlink)
        d.addCallback(lambda _: self.syncer.sync(self.messages_dir))
        return d

    def load(self, queue_id: str) -> Deferred:
        """
        Read a committed message's current envelope: C{<qid>.env} if
        there is one, else the one embedded in the queue file.

        @return: a L{Deferred} firing with the L{Envelope}, or failing with
            L{OSError} (C{FileNotFoundError} if the message is not in the
            queue), L{EnvelopeFormatError}, or
            L{mailappliance.queue.layout.CorruptTrailer} /
            L{mailappliance.queue.layout.NoTrailer}.
        """
        return self.disk.run(read_current_envelope, self.messages_dir, queue_id)

    # -- start-up ----------------------------------------------------------

    def recover(self) -> Deferred:
        """
        Bring the queue directory to a clean state after a start or a
        crash, in the disk pool: create the folders, empty C{tmp/}, remove
        version-1 bodies without an envelope, move unreadable envelopes
        (and their bodies), envelopes without a body and queue files whose
        trailer does not check out to C{corrupt/}. Both layouts are read
        (module docstring). Files of messages this process is receiving
        right now are left alone.

        The server must be the only process doing this: the command line
        reads the queue but never recovers it.

        @return: a L{Deferred} firing with the committed envelopes, a
            L{list} of L{Envelope} sorted by arrival (then queue id).
        """
        d = self.disk.run(self._recover_blocking)

        def report(result: tuple[list[Envelope], list[_Event], set[str]]) -> list[Envelope]:
            envelopes, events, with_envelope_files = result
            self._envelope_files.update(with_envelope_files)
            for event in events:
                stem = os.path.basename(event.name).split(".", 1)[0]
                # The queue id first, when the file has one, so that
                # grepping for it finds this line too.
                where = f"qid={stem} file={event.name}" if is_queue_id(stem) else f"file={event.name}"
                if event.status == "corrupt":
                    self.log.error(
                        "{where} status=corrupt reason={reason} moved_to={corrupt}",
                        where=where,
                        reason=quote(event.reason),
                        corrupt=self.corrupt_dir,
                    )
                else:
                    self.log.info(
                        "{where} status={status} reason={reason}",
                        where=where,
                        status=event.status,
                        reason=quote(event.reason),
                    )
            self.log.info("event=recover status=done messages={count}", count=len(envelopes))
            return envelopes

        d.addCallback(report)
        return d

    def _recover_blocking(self) -> tuple[list[Envelope], list[_Event], set[str]]:
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
        with_envelope_files: set[str] = set()
        moved = False
        for name in sorted(names):
            if name.endswith(ENVELOPE_SUFFIX):
                # Version 1, or version 2 after an update: the .env rules.
                stem = name[: -len(ENVELOPE_SUFFIX)]
                if stem in self._live:
                    continue
                envelope, problem = self._read_envelope(name, stem, stem in names)
                if envelope is not None:
                    envelopes.append(envelope)
                    with_envelope_files.add(stem)
                    continue
                self._move_to_corrupt(name)
                if stem in names:
                    self._move_to_corrupt(stem)
                moved = True
                events.append(_Event("corrupt", os.path.join("messages", name), problem))
            elif name + ENVELOPE_SUFFIX not in names and name not in self._live:
                envelope, problem = self._read_queue_file(name)
                if envelope is not None:
                    envelopes.append(envelope)
                else:
                    # Kept for the administrator, never deleted: a file
                    # without a readable envelope may still be a message
                    # (a damaged end), or be someone else's file.
                    self._move_to_corrupt(name)
                    moved = True
                    events.append(_Event("corrupt", os.path.join("messages", name),
                                         problem or "no envelope (not a queue file, or its end is damaged)"))
        if moved:
            fsync_directory(self.corrupt_dir)
        if events:
            fsync_directory(self.messages_dir)
        envelopes.sort(key=lambda e: (e.arrival, e.queue_id))
        return envelopes, events, with_envelope_files

    def _read_queue_file(self, name: str) -> tuple[Envelope | None, str | None]:
        """
        Read a C{messages/<name>} that has no C{.env}.

        @return: the embedded envelope and L{None}; or L{None} and L{None}
            for a file without a trailer (a version-1 body without its
            envelope: garbage); or L{None} and the reason it is corrupt.
        """
        try:
            envelope = read_embedded_envelope(os.path.join(self.messages_dir, name))
        except NoTrailer:
            return None, None
        except CorruptTrailer as e:
            return None, f"unreadable queue file: {e}"
        except EnvelopeFormatError as e:
            return None, f"unreadable envelope: {e}"
        except OSError as e:
            return None, f"cannot read queue file: {e.strerror}"
        if envelope.queue_id != name or not is_queue_id(name):
            return None, f"envelope names queue id {envelope.queue_id!r}"
        return envelope, None

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


def read_current_envelope(messages_dir: str, queue_id: str) -> Envelope:
    """
    Read a committed message's current envelope, in either layout: its
    C{<qid>.env} if there is one, else the one embedded in C{<qid>}.
    Blocking. Used by L{Spool.load} and the command line.

    @param messages_dir: C{DATA_DIR/queue/messages}.
    @param queue_id: the message's queue id (checked).
    @return: the L{Envelope}; the body is the first C{size} bytes of
        C{messages/<qid>}.
    @raise ValueError: if C{queue_id} is not a queue id.
    @raise OSError: C{FileNotFoundError} if neither file exists.
    @raise EnvelopeFormatError: if the envelope does not parse.
    @raise mailappliance.queue.layout.NoTrailer: a version-1 body alone.
    @raise mailappliance.queue.layout.CorruptTrailer: a damaged file.
    """
    if not is_queue_id(queue_id):
        raise ValueError(f"not a queue id: {queue_id!r}")
    path = os.path.join(messages_dir, queue_id)
    try:
        with open(path + ENVELOPE_SUFFIX, "rb") as f:
            return Envelope.from_bytes(f.read())
    except FileNotFoundError:
        pass
    return read_embedded_envelope(path)


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
