# -*- test-case-name: tests.test_queue_spool -*-
"""
Tests for L{mailappliance.queue.spool}: recovery after a crash, envelope
rewrites, removal and loading.
"""

import errno
import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailappliance.interfaces import ISpool
from mailappliance.queue.envelope import DELIVERED, Envelope, EnvelopeFormatError
from mailappliance.queue.spool import SUBDIRECTORIES
from tests.test_queue_writer import ManualDiskPool, SpoolFixture, listing, make_envelope

QID_A = "0000000000000AAA"
QID_B = "0000000000000BBB"
QID_C = "0000000000000CCC"


class SpoolTestCase(SpoolFixture, SynchronousTestCase):
    def setUp(self):
        self.make_spool()
        self.successResultOf(self.spool.recover())
        self.events.clear()

    def put(self, name, data, where="messages"):
        with open(os.path.join(self.spool.queue_dir, where, name), "wb") as f:
            f.write(data)

    def put_message(self, qid, arrival=1000.0, body=b"body\r\n"):
        envelope = make_envelope(queue_id=qid, size=len(body), arrival=arrival)
        self.put(qid, body)
        self.put(qid + ".env", envelope.to_bytes())
        return envelope

    def read(self, name, where="messages"):
        with open(os.path.join(self.spool.queue_dir, where, name), "rb") as f:
            return f.read()


class RecoverTests(SpoolTestCase):
    def test_provides_spool(self):
        """
        L{Spool} provides L{ISpool}.
        """
        self.assertTrue(verifyObject(ISpool, self.spool))

    def test_creates_layout(self):
        """
        Recovery creates the four folders of the layout, mode 0700.
        """
        self.assertEqual(sorted(os.listdir(self.spool.queue_dir)), sorted(SUBDIRECTORIES))
        for sub in SUBDIRECTORIES:
            mode = os.stat(os.path.join(self.spool.queue_dir, sub)).st_mode & 0o777
            self.assertEqual(mode, 0o700, sub)

    def test_returns_committed_sorted_by_arrival(self):
        """
        Committed messages are returned sorted by arrival time, whatever
        their file names.
        """
        late = self.put_message(QID_A, arrival=3000.0)
        early = self.put_message(QID_B, arrival=1000.0)
        middle = self.put_message(QID_C, arrival=2000.0)
        self.assertEqual(self.successResultOf(self.spool.recover()), [early, middle, late])
        self.assertEqual(self.events, ["event=recover status=done messages=3"])

    def test_body_in_tmp(self):
        """
        A body (or envelope) left in C{tmp/} by a crash during DATA or
        commit is removed and logged.
        """
        self.put(QID_A, b"half a mess", where="tmp")
        self.put(QID_A + ".env", b"{", where="tmp")
        self.put(QID_B + ".env.3", b"{}", where="tmp")
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.tmp_dir), [])
        self.assertIn(f'qid={QID_A} file=tmp/{QID_A} status=discarded reason="incomplete at start-up"', self.events)
        self.assertEqual(len(self.events), 4)

    def test_body_without_envelope(self):
        """
        A body in C{messages/} without its envelope (a crash between the
        two renames of a commit, or between the two unlinks of a removal)
        is removed.
        """
        self.put(QID_A, b"orphan")
        kept = self.put_message(QID_B)
        self.assertEqual(self.successResultOf(self.spool.recover()), [kept])
        self.assertEqual(listing(self.spool.messages_dir), [QID_B, QID_B + ".env"])
        self.assertIn(f'qid={QID_A} file=messages/{QID_A} status=discarded reason="body without envelope"', self.events)

    def test_garbage_envelope(self):
        """
        An envelope that is not JSON is moved, with its body, to
        C{corrupt/}, and logged; the other messages are recovered.
        """
        self.put(QID_A, b"body")
        self.put(QID_A + ".env", b"\x00\xffgarbage")
        kept = self.put_message(QID_B)
        self.assertEqual(self.successResultOf(self.spool.recover()), [kept])
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A, QID_A + ".env"])
        self.assertEqual(self.read(QID_A, where="corrupt"), b"body")
        self.assertEqual(listing(self.spool.messages_dir), [QID_B, QID_B + ".env"])
        [line] = [e for e in self.events if "status=corrupt" in e]
        self.assertTrue(line.startswith(f'qid={QID_A} file=messages/{QID_A}.env status=corrupt reason="unreadable envelope: not JSON'))

    def test_truncated_envelope(self):
        """
        A truncated envelope is corrupt.
        """
        data = make_envelope(queue_id=QID_A).to_bytes()
        self.put(QID_A, b"body")
        self.put(QID_A + ".env", data[: len(data) // 2])
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A, QID_A + ".env"])

    def test_wrong_version(self):
        """
        An envelope of an unknown version is corrupt (not silently
        misread).
        """
        data = make_envelope(queue_id=QID_A).to_bytes().replace(b'"version":1', b'"version":2')
        self.put(QID_A, b"body")
        self.put(QID_A + ".env", data)
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A, QID_A + ".env"])
        self.assertIn("unsupported envelope version 2", self.events[0])

    def test_envelope_names_other_message(self):
        """
        An envelope whose queue id is not its file name is corrupt.
        """
        self.put(QID_A, b"body")
        self.put(QID_A + ".env", make_envelope(queue_id=QID_B).to_bytes())
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A, QID_A + ".env"])

    def test_envelope_without_body(self):
        """
        An envelope without a body cannot be delivered: it goes to
        C{corrupt/}.
        """
        self.put(QID_A + ".env", make_envelope(queue_id=QID_A).to_bytes())
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A + ".env"])
        self.assertIn('reason="envelope without body"', self.events[0])

    def test_corrupt_name_taken(self):
        """
        A name already in C{corrupt/} is not overwritten.
        """
        self.put(QID_A + ".env", b"old", where="corrupt")
        self.put(QID_A + ".env", b"new")
        self.successResultOf(self.spool.recover())
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A + ".env", QID_A + ".env.1"])
        self.assertEqual(self.read(QID_A + ".env.1", where="corrupt"), b"new")

    def test_incoming_left_alone(self):
        """
        C{incoming/} is reserved: recovery does not touch it.
        """
        self.put("drop", b"x", where="incoming")
        self.successResultOf(self.spool.recover())
        self.assertEqual(listing(self.spool.incoming_dir), ["drop"])

    def test_live_writers_spared(self):
        """
        Files of messages being received or committed by this process are
        not crash leftovers: recovery running late does not remove them.
        """
        disk = ManualDiskPool()
        self.make_spool(disk=disk)
        receiving = self.spool.new_message()
        receiving.write(b"x" * (300 * 1024))
        committing = self.spool.new_message()
        committing.write(b"y")
        d = committing.commit(make_envelope())
        disk.run_one()  # receiving: creates tmp/<qid>
        envelope_path = self.spool.envelope_path(committing.queue_id)
        while not os.path.exists(envelope_path):
            disk.run_one()  # committing: write, then finish (renames)
        # Simulate the half-way state of a commit: body renamed, no envelope.
        hold = os.path.join(self.root, "hold")
        os.rename(envelope_path, hold)
        recovering = self.spool.recover()
        # Recovery runs before the commit's directory fsync has finished.
        disk.jobs.insert(0, disk.jobs.pop())
        disk.run_one()
        self.assertEqual(self.successResultOf(recovering), [])
        self.assertIn(receiving.queue_id, listing(self.spool.tmp_dir))
        self.assertIn(committing.queue_id, listing(self.spool.messages_dir))
        os.rename(hold, envelope_path)
        disk.run_all()
        self.successResultOf(d)


class UpdateRemoveLoadTests(SpoolTestCase):
    def test_update(self):
        """
        C{update} replaces the envelope durably, leaves no temporary file,
        and syncs C{messages/}.
        """
        envelope = self.put_message(QID_A)
        self.dir_syncs.clear()
        delivered = envelope.replace(recipients=(envelope.recipients[0].with_state(state=DELIVERED, attempts=1),))
        self.assertIsNone(self.successResultOf(self.spool.update(delivered)))
        self.assertEqual(Envelope.from_bytes(self.read(QID_A + ".env")), delivered)
        self.assertEqual(listing(self.spool.tmp_dir), [])
        self.assertEqual(self.dir_syncs, [self.spool.messages_dir])

    def test_update_removed_message(self):
        """
        Updating a message that is no longer queued fails with
        C{FileNotFoundError} and does not bring back an envelope without a
        body.
        """
        envelope = make_envelope(queue_id=QID_A)
        failure = self.failureResultOf(self.spool.update(envelope), FileNotFoundError)
        self.assertEqual(failure.value.errno, errno.ENOENT)
        self.assertEqual(listing(self.spool.messages_dir), [])
        self.assertEqual(listing(self.spool.tmp_dir), [])

    def test_update_write_fails(self):
        """
        If the new envelope cannot be written, the old one is intact and no
        temporary file remains.
        """
        envelope = self.put_message(QID_A)
        before = self.read(QID_A + ".env")

        def broken(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "fsync", broken)
        self.failureResultOf(self.spool.update(envelope.replace(size=99)), OSError)
        self.assertEqual(self.read(QID_A + ".env"), before)
        self.assertEqual(listing(self.spool.tmp_dir), [])

    def test_remove(self):
        """
        C{remove} unlinks the envelope first, then the body, then syncs
        C{messages/}; removing again is not an error.
        """
        self.put_message(QID_A)
        self.put_message(QID_B)
        self.dir_syncs.clear()
        unlinked = []
        real_unlink = os.unlink

        def recording_unlink(path):
            unlinked.append(os.path.basename(path))
            real_unlink(path)

        self.patch(os, "unlink", recording_unlink)
        self.successResultOf(self.spool.remove(QID_A))
        self.assertEqual(unlinked, [QID_A + ".env", QID_A])
        self.assertEqual(listing(self.spool.messages_dir), [QID_B, QID_B + ".env"])
        self.assertEqual(self.dir_syncs, [self.spool.messages_dir])
        self.successResultOf(self.spool.remove(QID_A))

    def test_load(self):
        """
        C{load} reads a committed envelope; a corrupt one fails with
        L{EnvelopeFormatError}, a missing one with L{FileNotFoundError}.
        """
        envelope = self.put_message(QID_A)
        self.assertEqual(self.successResultOf(self.spool.load(QID_A)), envelope)
        self.put(QID_B + ".env", b"nonsense")
        self.failureResultOf(self.spool.load(QID_B), EnvelopeFormatError)
        self.failureResultOf(self.spool.load(QID_C), FileNotFoundError)

    def test_paths(self):
        """
        C{body_path} and C{envelope_path} are in C{messages/}; anything
        that is not a queue id is refused, so no argument can name a file
        outside the queue.
        """
        self.assertEqual(self.spool.body_path(QID_A), os.path.join(self.spool.messages_dir, QID_A))
        self.assertEqual(self.spool.envelope_path(QID_A), os.path.join(self.spool.messages_dir, QID_A + ".env"))
        for bad in ["../../etc/passwd", "", QID_A + ".env", "/abs"]:
            self.assertRaises(ValueError, self.spool.body_path, bad)
            self.assertRaises(ValueError, self.spool.remove, bad)

    def test_new_message_ids(self):
        """
        Each new message gets a new, increasing queue id.
        """
        ids = [self.spool.new_message().queue_id for _ in range(50)]
        self.assertEqual(ids, sorted(set(ids)))
