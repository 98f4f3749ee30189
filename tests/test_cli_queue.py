# -*- test-case-name: tests.test_cli_queue -*-
"""
Tests for L{mailappliance.cli.queue} on both queue layouts: version 1 (a
body file and a C{.env}) left by an older run, and version 2 (one queue
file, the envelope after the body; a C{.env} only once updated).
"""

import io
import os
from argparse import Namespace
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.cli import queue as queue_cli
from mailappliance.cli.main import CommandError
from mailappliance.cli.queue import _delete, _flush, _list, read_queue
from mailappliance.queue.control import ServerLock
from mailappliance.queue.envelope import DELIVERED, Envelope
from mailappliance.queue.layout import encode_tail
from tests.test_queue_writer import make_envelope

QID_A = "0000000000000AAA"
QID_B = "0000000000000BBB"
QID_C = "0000000000000CCC"
QID_D = "0000000000000DDD"
BODY = b"Subject: s\r\n\r\nbody\r\n"


class QueueFilesTestCase(SynchronousTestCase):
    def setUp(self):
        self.queue_dir = os.path.abspath(self.mktemp())
        self.messages = os.path.join(self.queue_dir, "messages")
        os.makedirs(self.messages)
        self.config = SimpleNamespace(queue_dir=self.queue_dir)

    def put(self, name, data):
        with open(os.path.join(self.messages, name), "wb") as f:
            f.write(data)

    def put_v1(self, qid, arrival):
        envelope = make_envelope(queue_id=qid, size=len(BODY), arrival=arrival)
        self.put(qid, BODY)
        self.put(qid + ".env", envelope.to_bytes())
        return envelope

    def put_v2(self, qid, arrival):
        envelope = make_envelope(queue_id=qid, size=len(BODY), arrival=arrival)
        self.put(qid, BODY + encode_tail(envelope))
        return envelope


class ReadQueueTests(QueueFilesTestCase):
    def test_both_layouts(self):
        """
        Version-1 and version-2 messages are read, oldest first; a
        version-2 message's C{.env} supersedes its embedded envelope.
        """
        v1 = self.put_v1(QID_A, 3000.0)
        v2 = self.put_v2(QID_B, 1000.0)
        embedded = self.put_v2(QID_C, 2000.0)
        updated = embedded.replace(recipients=(embedded.recipients[0].with_state(state=DELIVERED, attempts=1),))
        self.put(QID_C + ".env", updated.to_bytes())
        self.assertEqual(read_queue(self.config), [v2, updated, v1])

    def test_skips_unreadable(self):
        """
        A version-1 body without envelope, a torn or corrupt queue file and
        files that are not queue files are skipped; nothing is changed.
        """
        v2 = self.put_v2(QID_A, 1000.0)
        self.put(QID_B, BODY)
        whole = BODY + encode_tail(make_envelope(queue_id=QID_C, size=len(BODY)))
        self.put(QID_C, whole[:-3])
        damaged = bytearray(BODY + encode_tail(make_envelope(queue_id=QID_D, size=len(BODY))))
        damaged[len(BODY) + 3] ^= 1
        self.put(QID_D, bytes(damaged))
        self.put("README", b"x")
        before = sorted(os.listdir(self.messages))
        self.assertEqual(read_queue(self.config), [v2])
        self.assertEqual(sorted(os.listdir(self.messages)), before)

    def test_no_queue(self):
        """
        Without a C{messages/} folder the queue is empty.
        """
        self.assertEqual(read_queue(SimpleNamespace(queue_dir=self.mktemp())), [])


class CommandTests(QueueFilesTestCase):
    def test_list_names_corrupt_files(self):
        """
        C{queue list} says how many files recovery set aside in
        C{corrupt/}, with or without queued messages.
        """
        out = io.StringIO()
        self.assertEqual(_list(self.config, Namespace(), None, out), 0)
        self.assertEqual(out.getvalue(), "queue is empty\n")
        corrupt = os.path.join(self.config.queue_dir, "corrupt")
        os.makedirs(corrupt, exist_ok=True)
        for name in ("a", "b"):
            with open(os.path.join(corrupt, name), "wb") as f:
                f.write(b"x")
        out = io.StringIO()
        _list(self.config, Namespace(), None, out)
        self.assertEqual(out.getvalue(), f"queue is empty\n2 file(s) set aside in {corrupt} as damaged "
                                         "(their log lines say status=corrupt)\n")
        self.put_v2(QID_A, 1000.0)
        out = io.StringIO()
        _list(self.config, Namespace(), None, out)
        self.assertTrue(out.getvalue().endswith("1 message(s)\n2 file(s) set aside in " + corrupt +
                                                " as damaged (their log lines say status=corrupt)\n"))

    def test_list_v2(self):
        """
        C{queue list} shows a version-2 message from its embedded envelope
        and never any of its body or trailer bytes.
        """
        self.put_v2(QID_A, 1000.0)
        out = io.StringIO()
        self.assertEqual(_list(self.config, Namespace(), None, out), 0)
        lines = out.getvalue().splitlines()
        self.assertTrue(lines[0].startswith(f"{QID_A}  age="), lines)
        self.assertIn(f"size={len(BODY)}  from=<bob@example.test>  recipients=1 (1 pending)", lines[0])
        self.assertTrue(lines[1].startswith("    to=<alice@example.test>  pending  attempts=0"), lines)
        self.assertEqual(lines[2:], ["1 message(s)"])
        self.assertNotIn("MAQ2", out.getvalue())
        self.assertNotIn("body", out.getvalue())

    def test_delete_offline_both_layouts(self):
        """
        With no server running, C{queue delete} removes a version-2 queue
        file (and its C{.env}) and a version-1 message.
        """
        self.put_v1(QID_A, 1000.0)
        envelope = self.put_v2(QID_B, 1000.0)
        self.put(QID_B + ".env", envelope.to_bytes())
        self.put_v2(QID_C, 1000.0)
        out = io.StringIO()
        self.assertEqual(_delete(self.config, Namespace(ids=[QID_A, QID_B]), None, out), 0)
        self.assertEqual(sorted(os.listdir(self.messages)), [QID_C])
        self.assertEqual(out.getvalue(), f"deleted {QID_A}, {QID_B}\n")

    def test_flush_offline_v2(self):
        """
        With no server running, C{queue flush} of a version-2 message
        writes its C{.env} (which supersedes the embedded envelope) and
        leaves the queue file as it was.
        """
        envelope = self.put_v2(QID_A, 1000.0)
        delayed = envelope.replace(recipients=(envelope.recipients[0].with_state(next_attempt=5000.0),))
        self.put(QID_A, BODY + encode_tail(delayed))
        self.assertEqual(_flush(self.config, Namespace(ids=[QID_A]), None, io.StringIO()), 0)
        with open(os.path.join(self.messages, QID_A + ".env"), "rb") as f:
            flushed = Envelope.from_bytes(f.read())
        self.assertEqual(flushed.recipients[0].next_attempt, 0.0)
        with open(os.path.join(self.messages, QID_A), "rb") as f:
            self.assertEqual(f.read(), BODY + encode_tail(delayed))
        self.assertEqual(read_queue(self.config), [flushed])


class OnlineFlushTests(QueueFilesTestCase):
    """
    C{queue flush} while a server runs (here: this test holds the server's
    lock) checks the ids against the queue folder first, as the offline
    path does.
    """

    def setUp(self):
        super().setUp()
        lock = ServerLock(self.queue_dir)
        self.assertTrue(lock.acquire())
        self.addCleanup(lock.release)
        self.commands = []

        def write_command(queue_dir, command, ids):
            self.commands.append((command, list(ids)))
            # A path that does not exist: as if the server took it at once.
            return os.path.join(queue_dir, "control", "taken")

        self.patch(queue_cli, "write_command", write_command)

    def test_unknown_id(self):
        """
        An unknown id: one-line error, exit status 1, nothing handed to the
        server, nothing said to be flushed.
        """
        out = io.StringIO()
        with self.assertRaises(CommandError) as cm:
            _flush(self.config, Namespace(ids=[QID_B]), None, out)
        self.assertEqual((str(cm.exception), cm.exception.status), (f"not in the queue: {QID_B}", 1))
        self.assertEqual((self.commands, out.getvalue()), ([], ""))

    def test_some_unknown(self):
        """
        The known ids are flushed by the server, the unknown ones reported.
        """
        self.put_v2(QID_A, 1000.0)
        out = io.StringIO()
        with self.assertRaises(CommandError) as cm:
            _flush(self.config, Namespace(ids=[QID_A, QID_B, QID_C]), None, out)
        self.assertEqual(str(cm.exception), f"not in the queue: {QID_B}, {QID_C}")
        self.assertEqual((self.commands, out.getvalue()), ([("flush", [QID_A])], f"flushed {QID_A}\n"))

    def test_known_and_all(self):
        self.put_v2(QID_A, 1000.0)
        out = io.StringIO()
        self.assertEqual(_flush(self.config, Namespace(ids=[QID_A]), None, out), 0)
        self.assertEqual(_flush(self.config, Namespace(ids=[]), None, out), 0)
        self.assertEqual(self.commands, [("flush", [QID_A]), ("flush", [])])
        self.assertEqual(out.getvalue(), f"flushed {QID_A}\nflushed all messages\n")
