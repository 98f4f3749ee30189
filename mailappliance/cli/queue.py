# -*- test-case-name: tests.test_cli_queue -*-
"""
C{mailappliance queue list|flush|delete}.

C{list} reads the envelopes (read-only; safe at any time). C{flush} and
C{delete} go through the running server when there is one (a command file
it carries out within a second, see L{mailappliance.queue.control}); with
no server running they change the queue files themselves, under the
server's lock so that a server cannot start meanwhile.
"""

from __future__ import annotations

import os
import time

from mailappliance.cli.main import CommandError
from mailappliance.disk import fsync_directory, write_file_durably
from mailappliance.queue.control import ServerLock, server_running, write_command
from mailappliance.queue.envelope import PENDING, Envelope, EnvelopeFormatError
from mailappliance.queue.ids import is_queue_id
from mailappliance.queue.layout import CorruptTrailer, NoTrailer
from mailappliance.queue.outcomes import age_text
from mailappliance.queue.spool import ENVELOPE_SUFFIX, read_current_envelope

COMMAND_WAIT = 10.0
POLL = 0.05


def add_parser(commands, common) -> None:
    parser = commands.add_parser("queue", help="inspect and steer the mail queue", parents=[common])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    actions.add_parser("list", help="list queued messages", parents=[common]).set_defaults(run=_list)
    flush = actions.add_parser("flush", help="retry now (all messages, or the given ones)", parents=[common])
    flush.add_argument("ids", nargs="*", metavar="ID")
    flush.set_defaults(run=_flush)
    delete = actions.add_parser("delete", help="remove messages without delivering them", parents=[common])
    delete.add_argument("ids", nargs="+", metavar="ID")
    delete.set_defaults(run=_delete)


def _messages_dir(config) -> str:
    return os.path.join(config.queue_dir, "messages")


def read_queue(config) -> list[tuple[Envelope, float]]:
    """
    The queued messages' current envelopes, oldest first, in either queue
    layout (L{mailappliance.queue.spool}): a message's C{<qid>.env} if it
    has one, else the envelope embedded in its queue file C{<qid>}.
    Unreadable or vanishing ones, and version-1 bodies without an envelope,
    are skipped; nothing is changed (only the server recovers the queue).
    Bodies are never read: the embedded envelope is found from the file's
    end.
    """
    directory = _messages_dir(config)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    queue_ids = {name.removesuffix(ENVELOPE_SUFFIX) for name in names}
    result = []
    for qid in queue_ids:
        if not is_queue_id(qid):
            continue
        try:
            envelope = read_current_envelope(directory, qid)
        except (OSError, EnvelopeFormatError, NoTrailer, CorruptTrailer):
            continue
        if envelope.queue_id != qid:
            continue
        result.append(envelope)
    return sorted(result, key=lambda e: (e.arrival, e.queue_id))


def _age(seconds: float) -> str:
    return age_text(max(0.0, seconds))


def _corrupt_note(config) -> str:
    """
    A line about the files recovery set aside in C{queue/corrupt/}, or
    C{""} when there are none.
    """
    try:
        count = sum(1 for name in os.listdir(os.path.join(config.queue_dir, "corrupt")) if not name.startswith("."))
    except OSError:
        return ""
    if not count:
        return ""
    return (f"{count} file(s) set aside in {os.path.join(config.queue_dir, 'corrupt')} as damaged "
            "(their log lines say status=corrupt)\n")


def _list(config, args, stdin, stdout) -> int:
    envelopes = read_queue(config)
    if not envelopes:
        stdout.write("queue is empty\n" + _corrupt_note(config))
        return 0
    now = time.time()
    for e in envelopes:
        sender = f"<{e.sender}>" if e.sender is not None else "<>"
        pending = len(e.pending)
        stdout.write(f"{e.queue_id}  age={_age(now - e.arrival)}  size={e.size}  from={sender}  "
                     f"recipients={len(e.recipients)} ({pending} pending)\n")
        for r in e.recipients:
            parts = [f"    to=<{r.target}>", r.state if r.local or r.state != PENDING else "pending (remote)"]
            if r.original.key != r.target.key:
                parts.append(f"orig=<{r.original}>")
            parts.append(f"attempts={r.attempts}")
            if r.state == PENDING:
                parts.append("next=now" if r.next_attempt <= now else f"next=in {_age(r.next_attempt - now)}")
            if r.last_error:
                parts.append(f"last_error={r.last_error!r}")
            stdout.write("  ".join(parts) + "\n")
    stdout.write(f"{len(envelopes)} message(s)\n" + _corrupt_note(config))
    return 0


def _check_ids(ids: list[str]) -> None:
    for i in ids:
        if not is_queue_id(i):
            raise CommandError(f"{i}: not a queue id")


def _via_server(config, command: str, ids: list[str], stdout) -> bool:
    """
    Hand the command to a running server. @return: False if none runs.
    """
    lock = ServerLock(config.queue_dir)
    if lock.acquire():
        lock.release()
        return False
    try:
        path = write_command(config.queue_dir, command, ids)
    except ValueError as e:
        raise CommandError(str(e)) from None
    deadline = time.monotonic() + COMMAND_WAIT
    while os.path.exists(path):
        if time.monotonic() > deadline:
            raise CommandError(f"the server has not taken the {command} command yet; it stays queued in {path}", 75)
        time.sleep(POLL)
    return True


def _flush(config, args, stdin, stdout) -> int:
    _check_ids(args.ids)
    # The ids are checked against the queue folder first, whether a server
    # runs or not: an unknown id is an error either way (a running server
    # handed one finds nothing to do and cannot say so to this command).
    present = {e.queue_id for e in read_queue(config)} if args.ids else set()
    wanted = [i for i in args.ids if i in present]
    missing = [i for i in args.ids if i not in present]
    if wanted or not args.ids:
        handed = _via_server(config, "flush", wanted, stdout)
    else:
        # Nothing to hand over; only whether the offline path may run.
        handed = server_running(config.queue_dir)
    if handed:
        if wanted or not args.ids:
            stdout.write(f"flushed {', '.join(wanted) or 'all messages'}\n")
        if missing:
            raise CommandError(f"not in the queue: {', '.join(missing)}")
        return 0
    with _offline(config):
        known = {e.queue_id: e for e in read_queue(config)}
        missing = [i for i in args.ids if i not in known]
        for qid in args.ids or list(known):
            if qid in known:
                e = known[qid]
                e = e.replace(recipients=tuple(r.with_state(next_attempt=0.0) if r.state == PENDING else r
                                               for r in e.recipients))
                write_file_durably(os.path.join(_messages_dir(config), qid + ".env"), e.to_bytes())
    if missing:
        raise CommandError(f"not in the queue: {', '.join(missing)}")
    stdout.write("no server running: messages will be tried as soon as it starts\n")
    return 0


def _delete(config, args, stdin, stdout) -> int:
    _check_ids(args.ids)
    present = {e.queue_id for e in read_queue(config)}
    missing = [i for i in args.ids if i not in present]
    if missing:
        raise CommandError(f"not in the queue: {', '.join(missing)}")
    if _via_server(config, "delete", args.ids, stdout):
        stdout.write(f"deleted {', '.join(args.ids)}\n")
        return 0
    with _offline(config):
        directory = _messages_dir(config)
        for qid in args.ids:
            for name in (qid + ".env", qid):  # envelope first: the commit point
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
        fsync_directory(directory)
    stdout.write(f"deleted {', '.join(args.ids)}\n")
    return 0


class _offline:
    """
    Hold the server's lock while changing the queue files directly.
    """

    def __init__(self, config) -> None:
        self.lock = ServerLock(config.queue_dir)

    def __enter__(self):
        if not os.path.isdir(self.lock.path.rsplit(os.sep, 1)[0]):
            raise CommandError("the queue folder does not exist yet (has the server ever run?)")
        if not self.lock.acquire():
            raise CommandError("a server started meanwhile; run the command again", 75)
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()



