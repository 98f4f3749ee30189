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
from mailappliance.queue.layout import encode_tail, encode_trailer
from mailappliance.queue.spool import LAYOUT_VERSION, SUBDIRECTORIES
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
        A file in C{messages/} without an envelope (a version-1 body whose
        envelope never arrived, a queue file whose end was damaged, an
        administrator's file) is moved to C{corrupt/} and logged as an
        error, never deleted.
        """
        self.put(QID_A, b"orphan")
        self.put("README", b"notes")
        kept = self.put_message(QID_B)
        self.assertEqual(self.successResultOf(self.spool.recover()), [kept])
        self.assertEqual(listing(self.spool.messages_dir), [QID_B, QID_B + ".env"])
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A, "README"])
        reason = 'reason="no envelope (not a queue file, or its end is damaged)"'
        self.assertIn(f'qid={QID_A} file=messages/{QID_A} status=corrupt {reason} moved_to={self.spool.corrupt_dir}',
                      self.events)
        self.assertIn(f'file=messages/README status=corrupt {reason} moved_to={self.spool.corrupt_dir}', self.events)

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
        queue_file = self.spool.body_path(committing.queue_id)
        while not os.path.exists(queue_file):
            disk.run_one()  # committing: write, fsync, rename
        # Renamed into messages/ but not yet acknowledged: the message is
        # not the recovery's to hand to a queue manager (nor to remove).
        with open(queue_file, "rb") as f:
            before = f.read()
        recovering = self.spool.recover()
        # Recovery runs before the commit's directory fsync has finished.
        disk.jobs.insert(0, disk.jobs.pop())
        disk.run_one()
        self.assertEqual(self.successResultOf(recovering), [])
        self.assertIn(receiving.queue_id, listing(self.spool.tmp_dir))
        self.assertEqual(listing(self.spool.messages_dir), [committing.queue_id])
        with open(queue_file, "rb") as f:
            self.assertEqual(f.read(), before)
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
        C{remove} of a version-1 message (left by an older run, found by
        recovery) unlinks the envelope first, then the body, then syncs
        C{messages/}; removing again is not an error.
        """
        self.put_message(QID_A)
        self.put_message(QID_B)
        self.successResultOf(self.spool.recover())
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


class Version2Tests(SpoolTestCase):
    """
    Layout version 2: one queue file per message (body, envelope,
    trailer), a C{.env} only after an update; recovery at every crash
    point of the commit, update and removal sequences.
    """

    def put_v2(self, qid, arrival=1000.0, body=b"body\r\n", where="messages"):
        envelope = make_envelope(queue_id=qid, size=len(body), arrival=arrival)
        self.put(qid, body + encode_tail(envelope), where=where)
        return envelope

    def commit(self, body=b"Subject: s\r\n\r\nbody\r\n"):
        writer = self.spool.new_message()
        writer.write(body)
        qid = self.successResultOf(writer.commit(make_envelope()))
        return qid, make_envelope(queue_id=qid, size=len(body))

    def recorded_unlinks(self):
        unlinked = []
        real_unlink = os.unlink

        def recording_unlink(path):
            unlinked.append(os.path.basename(path))
            real_unlink(path)

        self.patch(os, "unlink", recording_unlink)
        return unlinked

    def test_layout_version(self):
        """
        The layout version is 2.
        """
        self.assertEqual(LAYOUT_VERSION, 2)

    def test_recover_v2(self):
        """
        A committed queue file without C{.env} is recovered with its
        embedded envelope, and left where it is.
        """
        envelope = self.put_v2(QID_A)
        before = self.read(QID_A)
        self.assertEqual(self.successResultOf(self.spool.recover()), [envelope])
        self.assertEqual(listing(self.spool.messages_dir), [QID_A])
        self.assertEqual(self.read(QID_A), before)
        self.assertEqual(self.events, ["event=recover status=done messages=1"])

    def test_recover_both_layouts(self):
        """
        A queue holding version-1 messages (left by an older run) and
        version-2 ones is recovered whole, sorted by arrival.
        """
        old = self.put_message(QID_A, arrival=1000.0)
        new = self.put_v2(QID_B, arrival=2000.0)
        self.assertEqual(self.successResultOf(self.spool.recover()), [old, new])
        self.assertEqual(listing(self.spool.messages_dir), [QID_A, QID_A + ".env", QID_B])

    def test_env_supersedes_embedded(self):
        """
        When C{<qid>.env} exists it is the envelope, not the embedded one.
        """
        embedded = self.put_v2(QID_A)
        updated = embedded.replace(recipients=(embedded.recipients[0].with_state(state=DELIVERED, attempts=1),))
        self.put(QID_A + ".env", updated.to_bytes())
        self.assertEqual(self.successResultOf(self.spool.recover()), [updated])
        self.assertEqual(self.successResultOf(self.spool.load(QID_A)), updated)

    def test_crc_mismatch_to_corrupt(self):
        """
        A queue file whose trailer is there but whose CRC fails goes to
        C{corrupt/}, with a log line.
        """
        self.put_v2(QID_A)
        data = bytearray(self.read(QID_A))
        data[10] ^= 0x20
        self.put(QID_A, bytes(data))
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.messages_dir), [])
        self.assertEqual(self.read(QID_A, where="corrupt"), bytes(data))
        [line] = [e for e in self.events if "status=corrupt" in e]
        self.assertEqual(line, f'qid={QID_A} file=messages/{QID_A} status=corrupt '
                               f'reason="unreadable queue file: envelope CRC-32 mismatch" moved_to={self.spool.corrupt_dir}')

    def test_unparsable_embedded_envelope_to_corrupt(self):
        """
        A trailer whose CRC checks out over bytes that are no envelope:
        C{corrupt/}, as unreadable envelopes are.
        """
        self.put(QID_A, b"body\r\n" + b"{]" + encode_trailer(b"{]"))
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A])
        [line] = [e for e in self.events if "status=corrupt" in e]
        self.assertTrue(line.startswith(f'qid={QID_A} file=messages/{QID_A} status=corrupt reason="unreadable envelope: '))

    def test_queue_id_mismatch_to_corrupt(self):
        """
        An embedded envelope must name the file's queue id.
        """
        self.put_v2(QID_B)
        os.rename(os.path.join(self.spool.messages_dir, QID_B), os.path.join(self.spool.messages_dir, QID_A))
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A])
        self.assertIn(f'reason="envelope names queue id {QID_B!r}"', next(e for e in self.events if "corrupt" in e))

    def test_version1_body_without_envelope_kept(self):
        """
        A file without a trailer and without C{.env} (a version-1 body
        whose envelope never arrived, or a torn file) is moved to
        C{corrupt/}.
        """
        self.put(QID_A, b"body\r\n")
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.messages_dir), [])
        self.assertEqual(listing(self.spool.corrupt_dir), [QID_A])

    def test_crash_during_commit(self):
        """
        Every crash point of the commit: a partial or complete but
        unrenamed C{tmp/<qid>} is discarded (the client got no 250); once
        renamed, the message is recovered whole.
        """
        body = b"Subject: s\r\n\r\nbody\r\n"
        envelope = make_envelope(queue_id=QID_A, size=len(body))
        whole = body + encode_tail(envelope)
        for cut in [0, 5, len(body), len(whole) - 1, len(whole)]:
            self.put(QID_A, whole[:cut], where="tmp")
            self.assertEqual(self.successResultOf(self.spool.recover()), [], cut)
            self.assertEqual(listing(self.spool.tmp_dir), [])
            self.assertEqual(listing(self.spool.messages_dir), [])
        self.put(QID_A, whole)
        self.assertEqual(self.successResultOf(self.spool.recover()), [envelope])

    def test_crash_during_update(self):
        """
        A crash before the new envelope's rename leaves the embedded one in
        force (the rewrite in C{tmp/} is discarded); after it, the new one.
        """
        envelope = self.put_v2(QID_A)
        updated = envelope.replace(recipients=(envelope.recipients[0].with_state(state=DELIVERED, attempts=1),))
        self.put(QID_A + ".env.0", updated.to_bytes(), where="tmp")
        self.assertEqual(self.successResultOf(self.spool.recover()), [envelope])
        self.assertEqual(listing(self.spool.tmp_dir), [])
        self.put(QID_A + ".env", updated.to_bytes())
        self.assertEqual(self.successResultOf(self.spool.recover()), [updated])

    def test_crash_during_removal(self):
        """
        A crash after C{.env} was unlinked but before the queue file was
        leaves the message with its envelope as committed (delivered again:
        a duplicate, never a loss); after both unlinks nothing is left.
        """
        envelope = self.put_v2(QID_A)
        self.assertEqual(self.successResultOf(self.spool.recover()), [envelope])
        self.put(QID_A + ".env", envelope.replace(recipients=(
            envelope.recipients[0].with_state(state=DELIVERED, attempts=1),)).to_bytes())
        os.unlink(os.path.join(self.spool.messages_dir, QID_A + ".env"))
        self.assertEqual(self.successResultOf(self.spool.recover()), [envelope])
        os.unlink(os.path.join(self.spool.messages_dir, QID_A))
        self.assertEqual(self.successResultOf(self.spool.recover()), [])
        self.assertEqual(listing(self.spool.corrupt_dir), [])

    def test_remove_one_unlink(self):
        """
        Removing a message committed by this process and never updated
        costs one unlink, of its queue file, then the sync of C{messages/}.
        """
        qid, _ = self.commit()
        self.dir_syncs.clear()
        unlinked = self.recorded_unlinks()
        self.successResultOf(self.spool.remove(qid))
        self.assertEqual(unlinked, [qid])
        self.assertEqual(listing(self.spool.messages_dir), [])
        self.assertEqual(self.dir_syncs, [self.spool.messages_dir])

    def test_remove_after_update(self):
        """
        A message that was updated has a C{.env}: removal unlinks it first,
        then the queue file.
        """
        qid, envelope = self.commit()
        self.successResultOf(self.spool.update(envelope.replace(recipients=(
            envelope.recipients[0].with_state(state=DELIVERED, attempts=1),))))
        self.assertEqual(listing(self.spool.messages_dir), [qid, qid + ".env"])
        unlinked = self.recorded_unlinks()
        self.successResultOf(self.spool.remove(qid))
        self.assertEqual(unlinked, [qid + ".env", qid])
        self.assertEqual(listing(self.spool.messages_dir), [])

    def test_remove_recovered_with_env(self):
        """
        Recovery learns which messages have a C{.env}: removing an updated
        version-2 message after a restart unlinks both, C{.env} first.
        """
        envelope = self.put_v2(QID_A)
        self.put(QID_A + ".env", envelope.to_bytes())
        self.put_v2(QID_B)
        self.successResultOf(self.spool.recover())
        unlinked = self.recorded_unlinks()
        self.successResultOf(self.spool.remove(QID_A))
        self.successResultOf(self.spool.remove(QID_B))
        self.assertEqual(unlinked, [QID_A + ".env", QID_A, QID_B])
        self.assertEqual(listing(self.spool.messages_dir), [])

    def test_load_both(self):
        """
        C{load} reads the embedded envelope of a version-2 message, and its
        C{.env} once updated.
        """
        qid, envelope = self.commit()
        self.assertEqual(self.successResultOf(self.spool.load(qid)), envelope)
        updated = envelope.replace(recipients=(envelope.recipients[0].with_state(state=DELIVERED, attempts=1),))
        self.successResultOf(self.spool.update(updated))
        self.assertEqual(self.successResultOf(self.spool.load(qid)), updated)

    def test_update_keeps_queue_file(self):
        """
        An update writes C{.env} and leaves the queue file (body and the
        envelope as committed) byte for byte as it was.
        """
        qid, envelope = self.commit()
        before = self.read(qid)
        self.successResultOf(self.spool.update(envelope.replace(recipients=(
            envelope.recipients[0].with_state(state=DELIVERED, attempts=1),))))
        self.assertEqual(self.read(qid), before)
