# -*- test-case-name: tests.test_queue_writer -*-
"""
Tests for L{mailappliance.queue.writer}: receiving a message into the spool
(streaming, backpressure, abort, and the durable commit).
"""

import errno
import os

from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailappliance.address import parse_mailbox
from mailappliance.disk import DirectorySyncer, DiskPool, SynchronousDiskPool
from mailappliance.interfaces import IMessageWriter
from mailappliance.queue.envelope import DELIVERED, PENDING, Envelope, Recipient
from mailappliance.queue.layout import encode_tail, read_embedded_envelope
from mailappliance.queue.spool import Spool
from mailappliance.queue.writer import CHUNK_SIZE, HIGH_WATER, LOW_WATER


class ManualDiskPool:
    """
    A disk pool whose jobs wait until the test runs them, in order, so a
    test can look at every intermediate state.
    """

    def __init__(self):
        self.jobs = []

    def run(self, function, *args, **kwargs):
        d = Deferred()
        self.jobs.append((function, args, kwargs, d))
        return d

    def run_one(self):
        function, args, kwargs, d = self.jobs.pop(0)
        try:
            result = function(*args, **kwargs)
        except BaseException:  # noqa: BLE001 -- handed to the Deferred, as a pool does
            d.errback()
        else:
            d.callback(result)

    def run_all(self):
        while self.jobs:
            self.run_one()


def make_envelope(queue_id="", size=0, recipients=("alice@example.test",), arrival=1000.0, sender="bob@example.test"):
    """
    An envelope with local recipients.
    """
    return Envelope(
        queue_id=queue_id,
        sender=parse_mailbox(sender) if sender else None,
        recipients=tuple(Recipient(parse_mailbox(r), parse_mailbox(r), True) for r in recipients),
        arrival=arrival,
        size=size,
    )


def listing(path):
    """
    Sorted names in a directory ([] if it does not exist).
    """
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


class SpoolFixture:
    """
    Builds a spool in a fresh temporary folder.
    """

    def make_spool(self, disk=None, dir_fsync=None):
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.disk = disk if disk is not None else SynchronousDiskPool()
        self.dir_syncs = []

        def record_dir_sync(path):
            self.dir_syncs.append(path)
            if dir_fsync is not None:
                dir_fsync(path)

        self.syncer = DirectorySyncer(self.disk, fsync=record_dir_sync)
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.events = []
        log = Logger(observer=lambda e: self.events.append(formatEvent(e)))
        self.spool = Spool(os.path.join(self.root, "queue"), self.disk, self.syncer, self.clock, log=log)
        self.committed = []
        self.spool.on_commit = self.committed.append
        return self.spool

    def read_body(self, qid):
        """
        @return: the body of the committed queue file C{messages/<qid>},
            after checking that exactly the embedded envelope and its
            trailer follow it (layout version 2).
        """
        path = self.spool.body_path(qid)
        envelope = read_embedded_envelope(path)
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(data[envelope.size:], encode_tail(envelope))
        return data[: envelope.size]

    def queue_files(self):
        q = self.spool
        return {
            "tmp": listing(q.tmp_dir),
            "messages": listing(q.messages_dir),
            "corrupt": listing(q.corrupt_dir),
        }


class CommitTests(SpoolFixture, SynchronousTestCase):
    def setUp(self):
        self.make_spool()
        self.successResultOf(self.spool.recover())

    def test_interface(self):
        """
        The writer provides L{IMessageWriter} and knows its queue id from
        the start.
        """
        writer = self.spool.new_message()
        self.assertTrue(verifyObject(IMessageWriter, writer))
        self.assertEqual(len(writer.queue_id), 16)
        self.assertEqual(writer.size, 0)

    def test_commit(self):
        """
        Committing moves one queue file into C{messages/}: the body byte for
        byte, then the envelope and its trailer; the envelope gets the writer's queue id and body size; the
        L{Deferred} fires with the queue id and C{on_commit} is called with
        the stored envelope.
        """
        writer = self.spool.new_message()
        body = b"Received: from x\r\n\r\n.dot\r\n\xff\xfe 8-bit\r\n"
        self.assertIsNone(writer.write(body[:10]))
        self.assertIsNone(writer.write(body[10:]))
        self.assertEqual(writer.size, len(body))
        qid = self.successResultOf(writer.commit(make_envelope()))
        self.assertEqual(qid, writer.queue_id)
        self.assertEqual(self.queue_files(), {"tmp": [], "messages": [qid], "corrupt": []})
        stored = make_envelope(queue_id=qid, size=len(body))
        with open(self.spool.body_path(qid), "rb") as f:
            self.assertEqual(f.read(), body + encode_tail(stored))
        self.assertEqual(read_embedded_envelope(self.spool.body_path(qid)), stored)
        self.assertEqual(self.committed, [stored])
        self.assertEqual(self.dir_syncs, [self.spool.messages_dir])
        self.assertEqual(os.stat(self.spool.body_path(qid)).st_mode & 0o777, 0o600)

    def test_empty_body(self):
        """
        A message with no body bytes still gets a queue file: its
        envelope and trailer alone.
        """
        writer = self.spool.new_message()
        qid = self.successResultOf(writer.commit(make_envelope()))
        with open(self.spool.body_path(qid), "rb") as f:
            self.assertEqual(f.read(), encode_tail(make_envelope(queue_id=qid, size=0)))
        self.assertEqual(self.read_body(qid), b"")

    def test_large_body_in_order(self):
        """
        A body larger than a chunk is written in several jobs, in order.
        """
        writer = self.spool.new_message()
        pieces = [bytes([i]) * 100_000 for i in range(12)]
        for piece in pieces:
            writer.write(piece)
        qid = self.successResultOf(writer.commit(make_envelope()))
        self.assertEqual(self.read_body(qid), b"".join(pieces))

    def test_no_commit_twice(self):
        """
        C{write} or C{commit} after C{commit} is a programming error.
        """
        writer = self.spool.new_message()
        writer.commit(make_envelope())
        self.assertRaises(RuntimeError, writer.write, b"x")
        self.assertRaises(RuntimeError, writer.commit, make_envelope())

    def test_without_on_commit(self):
        """
        Without an C{on_commit} hook the commit simply succeeds; an
        exception in the hook is logged and does not fail the commit (the
        message is already durable).
        """
        self.spool.on_commit = None
        self.successResultOf(self.spool.new_message().commit(make_envelope()))

        def broken(envelope):
            raise ZeroDivisionError()

        self.spool.on_commit = broken
        qid = self.successResultOf(self.spool.new_message().commit(make_envelope()))
        self.assertEqual(self.events[-1], f'qid={qid} status=error reason="on_commit failed"')
        self.assertEqual(listing(self.spool.messages_dir)[-1], qid)


class DirectHookTests(SpoolFixture, SynchronousTestCase):
    """
    The spool's C{on_direct} hook: a message whose body is still in memory
    at the commit is offered to it before anything is written.
    """

    def setUp(self):
        self.make_spool()
        self.successResultOf(self.spool.recover())
        self.offered = []

    def hook(self, outcome):
        def on_direct(envelope, body):
            self.offered.append((envelope, body))
            return outcome(envelope) if callable(outcome) else outcome
        self.spool.on_direct = on_direct

    def test_delivered_to_all(self):
        """
        When the hook delivers every recipient, the commit fires with the
        queue id and nothing reaches the queue (no file, no directory
        sync, no C{on_commit}).
        """
        self.hook(lambda envelope: succeed(envelope.replace(recipients=tuple(
            r.with_state(state=DELIVERED) for r in envelope.recipients))))
        writer = self.spool.new_message()
        writer.write(b"Subject: a\r\n")
        writer.write(b"\r\nbody\r\n")
        qid = self.successResultOf(writer.commit(make_envelope(recipients=("a@example.test", "b@example.test"))))
        self.assertEqual(qid, writer.queue_id)
        [(envelope, body)] = self.offered
        self.assertEqual(body, b"Subject: a\r\n\r\nbody\r\n")
        self.assertEqual((envelope.queue_id, envelope.size), (qid, len(body)))
        self.assertEqual(self.queue_files(), {"tmp": [], "messages": [], "corrupt": []})
        self.assertEqual((self.committed, self.dir_syncs), ([], []))
        self.assertEqual(writer.outstanding, 0)
        self.assertNotIn(qid, self.spool._live)

    def test_partly_delivered(self):
        """
        When the hook delivers some recipients, the message is committed
        to the queue with the envelope the hook returned.
        """
        def first_only(envelope):
            first, *rest = envelope.recipients
            return succeed(envelope.replace(recipients=(first.with_state(state=DELIVERED), *rest)))

        self.hook(first_only)
        writer = self.spool.new_message()
        writer.write(b"body\r\n")
        qid = self.successResultOf(writer.commit(make_envelope(recipients=("a@example.test", "b@example.test"))))
        [stored] = self.committed
        self.assertEqual([r.state for r in stored.recipients], [DELIVERED, PENDING])
        self.assertEqual(read_embedded_envelope(self.spool.body_path(qid)), stored)
        self.assertEqual(self.read_body(qid), b"body\r\n")
        self.assertEqual(writer.outstanding, 0)

    def test_declined(self):
        """
        A hook returning L{None} leaves the message to the queue.
        """
        self.hook(None)
        writer = self.spool.new_message()
        writer.write(b"body\r\n")
        qid = self.successResultOf(writer.commit(make_envelope()))
        self.assertEqual(len(self.offered), 1)
        self.assertEqual(self.committed, [make_envelope(queue_id=qid, size=6)])

    def test_hook_fails(self):
        """
        A hook that raises, or whose L{Deferred} fails, is logged and the
        message is queued unchanged: a consumer's bug never loses mail.
        """
        def broken(envelope, body):
            raise ZeroDivisionError()

        self.spool.on_direct = broken
        qid = self.successResultOf(self.spool.new_message().commit(make_envelope()))
        self.assertEqual(self.events[-1], f'qid={qid} status=error reason="direct delivery failed; queued"')
        self.assertEqual(listing(self.spool.messages_dir), [qid])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 0)

        self.hook(fail(ZeroDivisionError()))
        qid2 = self.successResultOf(self.spool.new_message().commit(make_envelope()))
        self.assertEqual(self.events[-1], f'qid={qid2} status=error reason="direct delivery failed; queued"')
        self.assertEqual(listing(self.spool.messages_dir), sorted([qid, qid2]))
        self.assertEqual([e.queue_id for e in self.committed], [qid, qid2])

    def test_body_not_in_memory(self):
        """
        A body that has been written to the queue file in part (larger
        than a chunk) is not offered: it is queued.
        """
        self.hook(lambda envelope: self.fail("offered"))
        writer = self.spool.new_message()
        writer.write(b"x" * (CHUNK_SIZE + 1))
        qid = self.successResultOf(writer.commit(make_envelope()))
        self.assertEqual(self.offered, [])
        self.assertEqual(listing(self.spool.messages_dir), [qid])

    def test_queue_commit_after_direct_fails(self):
        """
        If the queue commit that follows a partial direct delivery fails,
        the commit fails (the client is told to try again) and nothing is
        left in the queue.
        """
        def first_only(envelope):
            first, *rest = envelope.recipients
            return succeed(envelope.replace(recipients=(first.with_state(state=DELIVERED), *rest)))

        self.hook(first_only)
        self.patch(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        writer = self.spool.new_message()
        writer.write(b"body\r\n")
        withdrawn = []
        self.spool.on_withdraw = lambda qid: withdrawn.append(qid)
        failure = self.failureResultOf(writer.commit(make_envelope(recipients=("a@example.test", "b@example.test"))))
        self.assertEqual(failure.value.errno, errno.EIO)
        self.assertEqual(self.queue_files(), {"tmp": [], "messages": [], "corrupt": []})
        # The copies delivered are taken back: the client sends it again.
        self.assertEqual(withdrawn, [writer.queue_id])

    def test_withdraw_after_stop(self):
        """
        The hook to take copies back is the one in force when they were
        delivered: a stop in between (which unsets the spool's hooks) does
        not leave them behind.
        """
        withdrawn = []
        self.spool.on_withdraw = withdrawn.append

        def first_only_then_stop(envelope):
            first, *rest = envelope.recipients
            self.spool.on_withdraw = None
            return succeed(envelope.replace(recipients=(first.with_state(state=DELIVERED), *rest)))

        self.hook(first_only_then_stop)
        self.patch(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        writer = self.spool.new_message()
        self.failureResultOf(writer.commit(make_envelope(recipients=("a@example.test", "b@example.test"))), OSError)
        self.assertEqual(withdrawn, [writer.queue_id])

    def test_nothing_to_withdraw(self):
        """
        When direct delivery delivered nothing and the queue commit fails,
        there is nothing to take back; a withdrawal that fails is logged
        and the commit fails with its own error.
        """
        self.hook(lambda envelope: succeed(envelope))
        self.patch(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        withdrawn = []
        self.spool.on_withdraw = lambda qid: withdrawn.append(qid)
        self.failureResultOf(self.spool.new_message().commit(make_envelope()), OSError)
        self.assertEqual(withdrawn, [])

        def first_only(envelope):
            first, *rest = envelope.recipients
            return succeed(envelope.replace(recipients=(first.with_state(state=DELIVERED), *rest)))

        self.hook(first_only)
        self.spool.on_withdraw = lambda qid: fail(ZeroDivisionError())
        writer = self.spool.new_message()
        failure = self.failureResultOf(writer.commit(make_envelope(recipients=("a@example.test", "b@example.test"))))
        self.assertEqual(failure.value.errno, errno.EIO)
        self.assertIn(f'qid={writer.queue_id} status=error reason="withdrawing delivered copies failed"', self.events)


class RecordingStream:
    """
    A stream for the spool's C{on_stream} hook that records what it is
    given (and can fail at a step).
    """

    def __init__(self, mailbox, fail_at=None, fail_after=0):
        self.mailbox = mailbox
        self.data = b""
        self.calls = []
        self.fail_at = fail_at
        self.fail_after = fail_after

    def _step(self, name):
        self.calls.append(name)
        if name == self.fail_at and self.calls.count(name) > self.fail_after:
            raise OSError(errno.ENOSPC, "No space left on device")

    def write_blocking(self, data):
        self._step("write")
        self.data += data

    def finish_blocking(self):
        self._step("finish")
        return "/maildir/new/x"

    def discard_blocking(self):
        self.calls.append("discard")

    def published(self, final):
        self.calls.append("published")
        return succeed(final)


class StreamHookTests(SpoolFixture, SynchronousTestCase):
    """
    The spool's C{on_stream} hook: a body too large for memory, with its
    envelope known at the start, may go to a stream instead of the queue.
    """

    def setUp(self):
        self.make_spool()
        self.successResultOf(self.spool.recover())
        self.asked = []
        self.streams = []
        self.streamed = []
        self.spool.on_streamed = lambda envelope, path: self.streamed.append((envelope.queue_id, path))

    def hook(self, fail_at=None, decline=False, fail_after=0):
        def on_stream(sender, recipients):
            self.asked.append((sender, recipients))
            if decline:
                return None
            stream = RecordingStream(recipients[0].target, fail_at, fail_after)
            self.streams.append(stream)
            return stream
        self.spool.on_stream = on_stream

    def expected_writer(self, envelope):
        return self.spool.new_message(expected=(envelope.sender, envelope.recipients))

    def test_large_body_streamed(self):
        """
        The hook is asked at the first chunk; the whole body goes to the
        stream in order; the commit finishes and publishes it, tells
        C{on_streamed} and fires with the queue id; the queue is never
        touched.
        """
        self.hook()
        envelope = make_envelope()
        writer = self.expected_writer(envelope)
        pieces = [bytes([65 + i]) * 100_000 for i in range(4)]
        for piece in pieces:
            writer.write(piece)
        self.assertEqual(len(self.asked), 1)
        qid = self.successResultOf(writer.commit(envelope))
        [stream] = self.streams
        self.assertEqual(stream.data, b"".join(pieces))
        self.assertEqual(stream.calls[-2:], ["finish", "published"])
        self.assertEqual(self.streamed, [(qid, "/maildir/new/x")])
        self.assertEqual(self.queue_files(), {"tmp": [], "messages": [], "corrupt": []})
        self.assertEqual((self.committed, self.dir_syncs), ([], []))
        self.assertEqual(writer.outstanding, 0)

    def test_small_body_not_streamed(self):
        """
        A body that fits in memory never asks the hook.
        """
        self.hook()
        envelope = make_envelope()
        writer = self.expected_writer(envelope)
        writer.write(b"small\r\n")
        self.successResultOf(writer.commit(envelope))
        self.assertEqual(self.asked, [])

    def test_declined_or_unknown_envelope_queued(self):
        """
        A hook that declines, or a writer made without the envelope to
        come, keeps the queue path.
        """
        self.hook(decline=True)
        envelope = make_envelope()
        writer = self.expected_writer(envelope)
        writer.write(b"x" * (CHUNK_SIZE + 1))
        qid = self.successResultOf(writer.commit(envelope))
        self.assertEqual(len(self.asked), 1)
        self.assertEqual(listing(self.spool.messages_dir), [qid])
        self.hook()
        writer = self.spool.new_message()
        writer.write(b"x" * (CHUNK_SIZE + 1))
        qid2 = self.successResultOf(writer.commit(envelope))
        self.assertEqual(len(self.asked), 1)
        self.assertEqual(listing(self.spool.messages_dir), sorted([qid, qid2]))

    def test_first_write_fails(self):
        """
        When the stream's first write fails (the Maildir cannot be written),
        nothing is lost yet: the stream is discarded and the body goes to
        the queue file, whole, for the queue to deliver.
        """
        self.hook(fail_at="write")
        envelope = make_envelope()
        writer = self.expected_writer(envelope)
        body = b"x" * (CHUNK_SIZE + 1) + b"y" * CHUNK_SIZE + b"z"
        writer.write(body[:CHUNK_SIZE + 1])
        writer.write(body[CHUNK_SIZE + 1:])
        qid = self.successResultOf(writer.commit(envelope))
        self.assertEqual(self.streams[0].calls, ["write", "discard"])
        self.assertEqual(self.streamed, [])
        self.assertEqual(self.read_body(qid), body)
        self.assertEqual([e.queue_id for e in self.committed], [qid])
        self.assertIn(f'qid={qid} status=queueing reason="cannot write into the Maildir: '
                      f'[Errno {errno.ENOSPC}] No space left on device"', self.events)
        self.assertEqual(writer.outstanding, 0)

    def test_later_write_fails(self):
        """
        A write that fails after the stream took some of the body fails the
        commit (the client is told to try again; the body is nowhere else)
        and the stream is discarded; nothing is queued.
        """
        self.hook(fail_at="write", fail_after=1)
        envelope = make_envelope()
        writer = self.expected_writer(envelope)
        writer.write(b"x" * (CHUNK_SIZE + 1))
        writer.write(b"y" * (CHUNK_SIZE + 1))
        failure = self.failureResultOf(writer.commit(envelope))
        self.assertEqual(failure.value.errno, errno.ENOSPC)
        self.assertEqual(self.streams[0].calls, ["write", "write", "discard"])
        self.assertEqual((self.streamed, self.queue_files()["messages"]), ([], []))

    def test_finish_fails(self):
        """
        A failed finish (fsync, rename) fails the commit and discards the
        stream.
        """
        self.hook(fail_at="finish")
        envelope = make_envelope()
        writer = self.expected_writer(envelope)
        writer.write(b"x" * (CHUNK_SIZE + 1))
        self.failureResultOf(writer.commit(envelope), OSError)
        self.assertEqual(self.streams[0].calls, ["write", "finish", "discard"])
        self.assertEqual(self.streamed, [])

    def test_recipients_changed(self):
        """
        An envelope whose recipients are not the stream's mailbox alone is
        refused at the commit (the body is in the stream, not the queue).
        """
        self.hook()
        writer = self.expected_writer(make_envelope())
        writer.write(b"x" * (CHUNK_SIZE + 1))
        failure = self.failureResultOf(writer.commit(make_envelope(recipients=("alice@example.test",
                                                                               "bob@example.test"))))
        self.assertIn("recipients changed", str(failure.value))
        self.assertEqual(self.streams[0].calls, ["write", "discard"])

    def test_abort(self):
        """
        An aborted message's stream is discarded.
        """
        self.hook()
        writer = self.expected_writer(make_envelope())
        writer.write(b"x" * (CHUNK_SIZE + 1))
        writer.abort()
        self.assertEqual(self.streams[0].calls, ["write", "discard"])
        self.assertNotIn(writer.queue_id, self.spool._live)


class JobCountTests(SpoolFixture, SynchronousTestCase):
    def test_small_message_one_job_before_directory_sync(self):
        """
        A message smaller than L{CHUNK_SIZE} costs one disk job before the
        directory sync: the body, envelope and trailer are written by the
        commit job itself, in one C{write}, then fsynced and renamed.
        """
        disk = ManualDiskPool()
        self.make_spool(disk=disk)
        writer = self.spool.new_message()
        writer.write(b"Subject: x\r\n")
        writer.write(b"\r\nbody\r\n")
        self.assertEqual(disk.jobs, [])
        d = writer.commit(make_envelope())
        self.assertEqual(len(disk.jobs), 1)
        writes = []
        real_write = os.write

        def counting_write(fd, data):
            writes.append(bytes(data))
            return real_write(fd, data)

        self.patch(os, "write", counting_write)
        disk.run_one()
        self.assertEqual(listing(self.spool.messages_dir), [writer.queue_id])
        stored = make_envelope(queue_id=writer.queue_id, size=len(b"Subject: x\r\n\r\nbody\r\n"))
        self.assertEqual(writes, [b"Subject: x\r\n\r\nbody\r\n" + encode_tail(stored)])
        disk.run_all()
        self.assertEqual(self.successResultOf(d), writer.queue_id)
        self.assertEqual(self.read_body(writer.queue_id), b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(writer.outstanding, 0)

    def test_tail_after_write_in_flight(self):
        """
        When a write is in flight at commit time, the bytes still buffered
        are written after it, in order, before the commit job.
        """
        disk = ManualDiskPool()
        self.make_spool(disk=disk)
        writer = self.spool.new_message()
        writer.write(b"a" * CHUNK_SIZE)
        writer.write(b"tail")
        self.assertEqual(len(disk.jobs), 1)
        d = writer.commit(make_envelope())
        disk.run_all()
        self.assertEqual(self.successResultOf(d), writer.queue_id)
        self.assertEqual(self.read_body(writer.queue_id), b"a" * CHUNK_SIZE + b"tail")
        self.assertEqual(writer.outstanding, 0)


class DurabilityOrderTests(SpoolFixture, SynchronousTestCase):
    """
    The 250-level durability calls happen in the right order.
    """

    def test_order(self):
        """
        One fsync of the queue file, its rename into C{messages/} (the
        commit point), fsync of C{messages/}, and only then the commit
        L{Deferred} fires.
        """
        self.make_spool(dir_fsync=lambda path: ops.append(("dirsync", path)))
        self.successResultOf(self.spool.recover())
        ops = []
        paths = {}
        real_open, real_fsync, real_rename = os.open, os.fsync, os.rename

        def fake_open(path, *args, **kwargs):
            fd = real_open(path, *args, **kwargs)
            paths[fd] = path
            return fd

        def fake_fsync(fd):
            ops.append(("fsync", paths.get(fd)))
            real_fsync(fd)

        def fake_rename(src, dst):
            ops.append(("rename", src, dst))
            real_rename(src, dst)

        self.patch(os, "open", fake_open)
        self.patch(os, "fsync", fake_fsync)
        self.patch(os, "rename", fake_rename)
        writer = self.spool.new_message()
        writer.write(b"body\r\n")
        d = writer.commit(make_envelope())
        d.addCallback(lambda qid: ops.append(("fired", qid)))
        self.successResultOf(d)
        q = writer.queue_id
        tmp, messages = self.spool.tmp_dir, self.spool.messages_dir
        self.assertEqual(
            ops,
            [
                ("fsync", os.path.join(tmp, q)),
                ("rename", os.path.join(tmp, q), os.path.join(messages, q)),
                ("dirsync", messages),
                ("fired", q),
            ],
        )

    def test_not_durable_before_dir_sync(self):
        """
        With a disk pool that runs jobs on demand, the commit has not fired
        while the directory fsync is still waiting to run.
        """
        disk = ManualDiskPool()
        self.make_spool(disk=disk)
        writer = self.spool.new_message()
        writer.write(b"x")
        d = writer.commit(make_envelope())
        while len(disk.jobs) > 0 and not self.dir_syncs:
            job = disk.jobs[0][0]
            # The syncer's fsync job (a method of the syncer).
            if getattr(job, "__self__", None) is self.spool.syncer:
                break
            disk.run_one()
        self.assertNoResult(d)
        self.assertEqual(listing(self.spool.messages_dir), [writer.queue_id])
        disk.run_all()
        self.assertEqual(self.successResultOf(d), writer.queue_id)


class FailureTests(SpoolFixture, SynchronousTestCase):
    """
    A failed commit fails with the L{OSError} and leaves nothing behind.
    """

    def setUp(self):
        self.make_spool()
        self.successResultOf(self.spool.recover())

    def assertNothingLeft(self):
        self.assertEqual(self.queue_files(), {"tmp": [], "messages": [], "corrupt": []})
        self.assertEqual(self.committed, [])

    def failing(self, name, after=0, error=errno.ENOSPC):
        """
        Patch C{os.<name>} to fail with C{error} after C{after} calls.
        """
        real = getattr(os, name)
        calls = []

        def fake(*args):
            calls.append(args)
            if len(calls) > after:
                raise OSError(error, os.strerror(error))
            return real(*args)

        self.patch(os, name, fake)

    def test_write_fails(self):
        """
        A failed body write: later writes are dropped, backpressure never
        blocks, and C{commit} fails with the error.
        """
        self.failing("write")
        writer = self.spool.new_message()
        writer.write(b"x" * CHUNK_SIZE)
        self.assertIsNone(writer.write(b"y" * (2 * HIGH_WATER)))
        self.assertEqual(writer.outstanding, 0)
        failure = self.failureResultOf(writer.commit(make_envelope()), OSError)
        self.assertEqual(failure.value.errno, errno.ENOSPC)
        self.assertNothingLeft()
        self.assertEqual(len([e for e in self.events if "commit failed" in e]), 1)

    def test_body_fsync_fails(self):
        """
        A failed fsync of the body fails the commit.
        """
        self.failing("fsync")
        writer = self.spool.new_message()
        writer.write(b"hello\r\n")
        self.failureResultOf(writer.commit(make_envelope()), OSError)
        self.assertNothingLeft()

    def test_tail_write_fails(self):
        """
        A failed write of the envelope and trailer after the body went out
        in its own jobs fails the commit; the partial file is removed.
        """
        self.failing("write", after=1)
        writer = self.spool.new_message()
        writer.write(b"x" * CHUNK_SIZE)
        failure = self.failureResultOf(writer.commit(make_envelope()), OSError)
        self.assertEqual(failure.value.errno, errno.ENOSPC)
        self.assertNothingLeft()

    def test_rename_fails(self):
        """
        If the queue file cannot be renamed into C{messages/}, the commit
        fails and the file is removed from C{tmp/}.
        """
        self.failing("rename", error=errno.EIO)
        writer = self.spool.new_message()
        writer.write(b"hello\r\n")
        failure = self.failureResultOf(writer.commit(make_envelope()), OSError)
        self.assertEqual(failure.value.errno, errno.EIO)
        self.assertNothingLeft()

    def test_directory_sync_fails(self):
        """
        If C{messages/} cannot be fsynced the message is not durable: it is
        removed again and the commit fails.
        """

        def broken(path):
            raise OSError(errno.EIO, "I/O error")

        self.make_spool(dir_fsync=broken)
        self.successResultOf(self.spool.recover())
        writer = self.spool.new_message()
        writer.write(b"hello\r\n")
        self.failureResultOf(writer.commit(make_envelope()), OSError)
        self.assertNothingLeft()


class AbortTests(SpoolFixture, SynchronousTestCase):
    def test_abort_before_writing(self):
        """
        Aborting a writer that never wrote leaves nothing; abort is
        idempotent.
        """
        self.make_spool()
        writer = self.spool.new_message()
        writer.abort()
        writer.abort()
        self.assertEqual(listing(self.spool.tmp_dir), [])
        self.assertNotIn(writer.queue_id, self.spool._live)

    def test_abort_after_writes(self):
        """
        Aborting removes the partial body; later writes are ignored.
        """
        self.make_spool()
        writer = self.spool.new_message()
        writer.write(b"x" * (CHUNK_SIZE + 1))
        self.assertEqual(listing(self.spool.tmp_dir), [writer.queue_id])
        writer.abort()
        self.assertIsNone(writer.write(b"more"))
        self.assertEqual(listing(self.spool.tmp_dir), [])
        self.assertEqual(self.committed, [])

    def test_abort_during_write(self):
        """
        Aborting while a write job is in flight removes the file once the
        job is done, also the file the job itself created; waiters for
        backpressure are released.
        """
        disk = ManualDiskPool()
        self.make_spool(disk=disk)
        writer = self.spool.new_message()
        writer.write(b"x" * CHUNK_SIZE)
        waiting = writer.write(b"y" * HIGH_WATER)
        self.assertIsInstance(waiting, Deferred)
        self.assertEqual(len(disk.jobs), 1)
        writer.abort()
        self.successResultOf(waiting)
        self.assertEqual(len(disk.jobs), 1)
        disk.run_one()  # the write in flight: creates tmp/<qid>
        disk.run_all()  # the discard
        self.assertEqual(listing(self.spool.tmp_dir), [])
        self.assertEqual(writer.outstanding, 0)

    def test_abort_after_commit_ignored(self):
        """
        Once C{commit} was called, C{abort} does nothing: the commit
        completes.
        """
        disk = ManualDiskPool()
        self.make_spool(disk=disk)
        writer = self.spool.new_message()
        writer.write(b"data")
        d = writer.commit(make_envelope())
        writer.abort()
        disk.run_all()
        self.assertEqual(self.successResultOf(d), writer.queue_id)
        self.assertEqual(listing(self.spool.messages_dir), [writer.queue_id])


class BackpressureTests(SpoolFixture, SynchronousTestCase):
    def test_write_returns_deferred_when_backlog_large(self):
        """
        C{write} returns L{None} until more than L{HIGH_WATER} bytes are
        outstanding, then a L{Deferred} that fires once the disk has
        brought the backlog down to L{LOW_WATER}.
        """
        disk = ManualDiskPool()
        self.make_spool(disk=disk)
        writer = self.spool.new_message()
        piece = b"z" * (64 * 1024)
        results = []
        while not results or results[-1] is None:
            results.append(writer.write(piece))
        self.assertEqual(len(results), HIGH_WATER // len(piece) + 1)
        self.assertGreater(writer.outstanding, HIGH_WATER)
        waiting = results[-1]
        # One job at a time, so writes land in order.
        self.assertEqual(len(disk.jobs), 1)
        disk.run_one()
        self.assertNoResult(waiting)
        while writer.outstanding > LOW_WATER:
            disk.run_one()
        self.successResultOf(waiting)

    def test_memory_bounded(self):
        """
        A producer that honours backpressure streams a 32 MiB message
        through a slow disk with never more than L{HIGH_WATER} plus one
        piece in memory.
        """
        disk = ManualDiskPool()
        self.make_spool(disk=disk)
        writer = self.spool.new_message()
        piece = b"m" * 50_000
        total = 32 * 1024 * 1024
        written = 0
        peak = 0
        while written < total:
            waiting = writer.write(piece)
            written += len(piece)
            peak = max(peak, writer.outstanding)
            if waiting is not None:
                while not waiting.called:
                    disk.run_one()
        d = writer.commit(make_envelope())
        disk.run_all()
        qid = self.successResultOf(d)
        self.assertLessEqual(peak, HIGH_WATER + len(piece))
        self.assertEqual(read_embedded_envelope(self.spool.body_path(qid)).size, written)
        self.assertEqual(os.path.getsize(self.spool.body_path(qid)),
                         written + len(encode_tail(make_envelope(queue_id=qid, size=written))))


class GroupCommitTests(SpoolFixture, SynchronousTestCase):
    def test_concurrent_commits_share_directory_fsyncs(self):
        """
        Ten messages committed at the same moment need only one fsync of
        C{messages/}: the first commit's request queues it behind the other
        commits' jobs, and it covers every request made before it began.
        """
        disk = ManualDiskPool()
        self.make_spool(disk=disk)
        writers = [self.spool.new_message() for _ in range(10)]
        results = []
        for writer in writers:
            writer.write(b"message\r\n")
            writer.commit(make_envelope()).addCallback(results.append)
        disk.run_all()
        self.assertEqual(sorted(results), sorted(w.queue_id for w in writers))
        self.assertEqual(self.dir_syncs, [self.spool.messages_dir])
        self.assertEqual(len(self.committed), 10)


class ThreadedPoolTests(SpoolFixture, TestCase):
    """
    The writer with the real thread pool and reactor.
    """

    def test_concurrent_messages(self):
        """
        Twenty messages streamed at once through a real L{DiskPool}, each
        honouring backpressure, are all committed byte for byte.
        """
        from twisted.internet import reactor

        pool = DiskPool(reactor, threads=4)
        pool.startService()
        self.addCleanup(pool.stopService)
        self.make_spool(disk=pool)

        @inlineCallbacks
        def send(n):
            writer = self.spool.new_message()
            for i in range(40):
                waiting = writer.write(bytes([n]) * 40_000)
                if waiting is not None:
                    yield waiting
            qid = yield writer.commit(make_envelope())
            return n, qid

        def check(results):
            for n, qid in results:
                self.assertEqual(self.read_body(qid), bytes([n]) * 1_600_000)
            self.assertEqual(len(self.committed), 20)
            self.assertEqual(listing(self.spool.tmp_dir), [])

        return gatherResults([send(n) for n in range(20)]).addCallback(check)
