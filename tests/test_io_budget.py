# -*- test-case-name: tests.test_io_budget -*-
"""
The I/O budget of an accepted message: the regression guard of the
benchmark (C{bench/}, README "Benchmarks").

On these machines fsync is cheap but not free and every system call made
in the disk pool is a hand-off of the GIL between threads, so throughput
follows the number of calls per message. These tests count them, through
the disk seam: the real spool, queue manager, Maildir delivery, SMTP and
POP3 protocols run with a disk pool that runs each job at once and notes
that it is inside a job, while the C{os} calls the product uses are
wrapped to count (by kind and by the file they touch). None of it is
timed, so it is deterministic and fast.

What the design says (DESIGN.md "disk.py", L{mailappliance.queue.writer},
L{mailappliance.maildir}, L{mailappliance.queue.spool}), for one message
of a few KB to one local recipient:

  - direct delivery (L{mailappliance.queue.direct}, "Direct delivery"):
    the body is still in memory at the end of the data (it is buffered up
    to L{mailappliance.queue.writer.CHUNK_SIZE}), so it goes straight into
    the Maildir before the 250: the C{Return-Path:}/C{Delivered-To:}
    prefix and the body in one C{write}, fsynced, renamed into C{new/};
    C{new/} synced; no C{mkdir} or C{stat} of the Maildir's folders once
    it has had a delivery; the queue is not touched;

so 1 file creation, 1 write, 1 file fsync, 1 directory fsync, 1 rename
and no unlink per message, none of them on the reactor thread.

A larger message for one local mailbox is written into the Maildir as it
arrives, in chunks of L{mailappliance.queue.writer.CHUNK_SIZE}, with the
same single creation, fsync, rename and sync of C{new/}.

When the message is queued (a remote recipient, a larger body for several
mailboxes, or a direct delivery that failed):

  - spool (queue layout version 2, L{mailappliance.queue.layout}): one
    file created, C{tmp/<qid>}; the body, the envelope and its trailer in
    one C{write}, fsynced; one rename into C{messages/}; C{messages/}
    synced;
  - delivery: as above, but copied from the queue file (in one C{write}
    below 64 KiB, L{mailappliance.maildir.COPY_CHUNK_SIZE}), stopping at
    the body's length;
  - removal: one unlink (a message never updated has no C{.env});
    C{messages/} synced;

so 2 file creations, 2 writes, 2 file fsyncs, 3 directory fsyncs, 2
renames and 1 unlink per message.
(Queue layout version 1 cost one more creation, write, file fsync, rename
and unlink each: a separate envelope file.) Without concurrency every directory sync is
its own fsync; with many sessions committing at once they share one
(group commit), which L{GroupCommitTests} checks with a pool whose jobs
wait their turn.

If a change alters the budget on purpose, change the numbers here in the
same commit and say why; a change that silently adds I/O per message
fails here.
"""

from __future__ import annotations

import builtins
import os
from collections import Counter
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailappliance.address import Mailbox
from mailappliance.disk import DirectorySyncer
from mailappliance.maildir import MaildirDelivery
from mailappliance.pop3.locks import MailboxLocks
from mailappliance.pop3.server import POP3Factory
from mailappliance.pop3.settings import POP3Settings
from mailappliance.queue.envelope import Envelope, Recipient
from mailappliance.queue.manager import QueueManager
from mailappliance.queue.rounds import delivery_prefix
from mailappliance.queue.spool import Spool
from mailappliance.smtp.factory import SMTPFactory
from mailappliance.smtp.policy import SMTPSettings
from mailappliance.testing import FakeResolver, SMTPHarness

# The budget of one small message to one local recipient (module docstring).
# (The Maildir prefix shares the body's write since the Maildir ensure cache
# change; it was 2 writes before.)
# (Queue layout version 2 -- one queue file with the envelope after the
# body -- took out the envelope file: one creation, write, file fsync,
# rename and unlink fewer than version 1's 3 / 3 / 3 / 2.)
# (Direct delivery of small local-only messages took the queue out of
# their path: 1 / 1 / 1 / 1 / 1 / 0 below instead of the queued budget.)
QUEUED = {
    "create": {"queue body": 1, "maildir message": 1},
    "write": {"queue body": 1, "maildir message": 1},
    "file fsync": {"queue body": 1, "maildir message": 1},
    "directory fsync": {"queue messages/": 2, "maildir new/": 1},
    "rename": 2,
    "unlink": 1,
}
DIRECT = {
    "create": {"maildir message": 1},
    "write": {"maildir message": 1},
    "file fsync": {"maildir message": 1},
    "directory fsync": {"maildir new/": 1},
    "rename": 1,
    "unlink": 0,
}
# Calls that only look (stat) or make sure (mkdir of folders that exist)
# per delivery: not part of the design. MaildirDelivery remembers the
# Maildirs it has made sure of (it was 3 failing mkdirs and 4 stats per
# delivery before), so there are none.
MAX_METADATA_CALLS_PER_MESSAGE = 0

SMALL_BODY_LINES = [b"Subject: budget\r\n", b"\r\n"] + [b"%04d " % n + b"x" * 70 + b"\r\n" for n in range(55)]
LARGE_MESSAGE_SIZE = 1024 * 1024
LARGE_FEED_SIZE = 64 * 1024
# The design's chunk sizes (queue.writer.CHUNK_SIZE, maildir.COPY_CHUNK_SIZE),
# written out so that shrinking them shows here.
SPOOL_WRITE_CHUNK = 128 * 1024
MAILDIR_COPY_CHUNK = 64 * 1024
CONCURRENT_MESSAGES = 20

_WATCHED = ("open", "write", "fsync", "rename", "unlink", "mkdir", "stat", "scandir", "listdir", "close")


class IOCounter:
    """
    Wraps the C{os} calls the product makes (and C{open}) to count them:
    C{counts[(call, what)]} for calls made inside a disk pool job, where
    C{what} names the file or folder (see L{classify}); C{outside} for the
    same calls made elsewhere (on the reactor thread).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.depth = 0
        # Set while the test itself looks at the files.
        self.muted = False
        self.counts: Counter = Counter()
        self.outside: Counter = Counter()
        self._fds: dict[int, str] = {}

    def install(self, testcase: SynchronousTestCase) -> None:
        for name in _WATCHED:
            testcase.patch(os, name, self._wrap(name, getattr(os, name)))
        testcase.patch(builtins, "open", self._wrap_open(builtins.open))

    def reset(self) -> None:
        self.counts.clear()
        self.outside.clear()

    def classify(self, path: Any) -> str:
        """
        @return: what a path is, in the budget's terms.
        """
        path = os.fsdecode(path) if isinstance(path, (bytes, str)) else str(path)
        if not path.startswith(self.root):
            return "elsewhere"
        parts = os.path.relpath(path, self.root).split(os.sep)
        if parts[0] == "queue":
            if len(parts) == 2:
                return f"queue {parts[1]}/"
            return "queue envelope" if ".env" in parts[-1] else "queue body"
        if parts[0] == "mail":
            if len(parts) <= 4:
                return "maildir " + (parts[3] + "/" if len(parts) == 4 else "folders")
            return "maildir message"
        return "elsewhere"

    def note(self, call: str, what: str) -> None:
        if self.muted:
            return
        (self.counts if self.depth else self.outside)[(call, what)] += 1

    def _wrap(self, name: str, real: Any) -> Any:
        counter = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name == "close":
                counter._fds.pop(args[0], None)
                return real(*args, **kwargs)
            if name in ("write", "fsync"):
                fd = args[0]
                what = counter._fds.get(fd, "elsewhere")
                if name == "fsync" and what == "elsewhere":
                    return real(*args, **kwargs)
                counter.note(name, what)
                return real(*args, **kwargs)
            what = counter.classify(args[0]) if args else "elsewhere"
            if what != "elsewhere":
                counter.note(name, what)
            if name == "open" and what != "elsewhere" and len(args) > 1 and args[1] & os.O_CREAT:
                counter.note("create", what)
            result = real(*args, **kwargs)
            if name == "open" and what != "elsewhere":
                counter._fds[result] = what
            return result

        return wrapper

    def _wrap_open(self, real: Any) -> Any:
        counter = self

        def wrapper(file: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, (str, bytes)):
                what = counter.classify(file)
                if what != "elsewhere":
                    counter.note("open", what)
            return real(file, *args, **kwargs)

        return wrapper

    def total(self, call: str) -> Counter:
        """
        @return: C{what -> count} of one call, inside disk jobs.
        """
        return Counter({what: n for (c, what), n in self.counts.items() if c == call})

    def in_product_files(self) -> Counter:
        """
        @return: calls on the product's files made outside disk jobs.
        """
        return Counter({k: n for k, n in self.outside.items() if k[1] != "elsewhere"})


class CountingDiskPool:
    """
    The disk seam: runs each job at once (like
    L{mailappliance.disk.SynchronousDiskPool}) and tells the counter that
    the calls it makes are inside a job.
    """

    def __init__(self, counter: IOCounter) -> None:
        self.counter = counter
        self.jobs = 0

    def run(self, function: Any, *args: Any, **kwargs: Any) -> Deferred:
        self.jobs += 1
        self.counter.depth += 1
        try:
            return maybeDeferred(function, *args, **kwargs)
        finally:
            self.counter.depth -= 1


class QueuedDiskPool(CountingDiskPool):
    """
    A pool whose jobs wait until L{run_all}, in order, as they would wait
    for a thread when the disk is busy.
    """

    def __init__(self, counter: IOCounter) -> None:
        super().__init__(counter)
        self.queue: list[tuple[Any, tuple, dict, Deferred]] = []

    def run(self, function: Any, *args: Any, **kwargs: Any) -> Deferred:
        d: Deferred = Deferred()
        self.queue.append((function, args, kwargs, d))
        return d

    def run_all(self) -> None:
        while self.queue:
            function, args, kwargs, d = self.queue.pop(0)
            super().run(function, *args, **kwargs).chainDeferred(d)


class BudgetMixin:
    """
    A data folder with a real spool, queue manager and Maildir delivery
    on a counting disk pool.
    """

    def make_server(self, pool_class: type = CountingDiskPool) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.counter = IOCounter(self.root)
        self.counter.install(self)
        self.disk = pool_class(self.counter)
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.syncer = DirectorySyncer(self.disk)
        self.spool = Spool(os.path.join(self.root, "queue"), self.disk, self.syncer, self.clock)
        self.delivery = MaildirDelivery(os.path.join(self.root, "mail"), "mx.example.test", self.disk, self.syncer)
        self.manager = QueueManager(self.spool, self.delivery, self.clock, log=Logger(observer=lambda e: None))
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        if isinstance(self.disk, QueuedDiskPool):
            self.disk.run_all()

    def maildir_new(self) -> list[str]:
        folder = os.path.join(self.root, "mail", "example.test", "alice", "new")
        self.counter.muted = True
        try:
            return os.listdir(folder) if os.path.isdir(folder) else []
        finally:
            self.counter.muted = False

    def assert_none_outside_the_pool(self) -> None:
        self.assertEqual(self.counter.in_product_files(), Counter(),
                         "file system calls on the reactor thread")


class SMTPBudgetTests(BudgetMixin, SynchronousTestCase):
    """
    Messages received by the real SMTP protocol, queued, delivered and
    removed, counted.
    """

    def setUp(self) -> None:
        self.make_server()
        self.events: list[dict] = []
        self.factory = SMTPFactory(
            SMTPSettings(hostname="mx.example.test"),
            FakeResolver(accounts=("alice@example.test",)),
            self.spool,
            self.clock,
            Logger(namespace="budget", observer=self.events.append),
        )
        self.factory.events = self.events  # type: ignore[attr-defined]

    def send_message(self, body_chunks: list[bytes]) -> bytes:
        """
        One session: EHLO, MAIL, RCPT, DATA, the body in the given pieces
        (one C{dataReceived} each), the end of data, QUIT.

        @return: the reply to the end of the data.
        """
        session = SMTPHarness(factory=self.factory)
        session.send(b"EHLO client.example.test\r\n")
        session.send(b"MAIL FROM:<sender@example.org>\r\n")
        self.assertTrue(session.send(b"RCPT TO:<alice@example.test>\r\n").startswith(b"250"))
        self.assertTrue(session.send(b"DATA\r\n").startswith(b"354"))
        for chunk in body_chunks:
            session.send(chunk)
        reply = session.send(b".\r\n")
        session.send(b"QUIT\r\n")
        return reply

    def assert_budget(self, budget: dict[str, Any]) -> None:
        self.assertEqual(self.counter.total("create"), Counter(budget["create"]))
        self.assertEqual(self.counter.total("write"), Counter(budget["write"]))
        fsyncs = self.counter.total("fsync")
        self.assertEqual(Counter({w: n for w, n in fsyncs.items() if not w.endswith("/")}),
                         Counter(budget["file fsync"]))
        self.assertEqual(Counter({w: n for w, n in fsyncs.items() if w.endswith("/")}),
                         Counter(budget["directory fsync"]))
        self.assertEqual(sum(self.counter.total("rename").values()), budget["rename"])
        self.assertEqual(sum(self.counter.total("unlink").values()), budget["unlink"])
        metadata = sum(self.counter.total("mkdir").values()) + sum(self.counter.total("stat").values())
        self.assertLessEqual(metadata, MAX_METADATA_CALLS_PER_MESSAGE, self.counter.counts)
        self.assert_none_outside_the_pool()

    def test_small_message(self) -> None:
        """
        A 4 KB message to a local recipient sent line by line (one
        C{dataReceived} per line) is delivered directly: 1 file creation,
        1 write, 1 file fsync, 1 directory fsync, 1 rename, no unlink, all
        in the disk pool: no per-line write, no extra sync, no mkdir or
        stat of the known Maildir, nothing in the queue.
        (The first message, which creates the Maildir, is not counted.)
        """
        self.assertTrue(self.send_message(SMALL_BODY_LINES).startswith(b"250"))
        self.counter.reset()

        reply = self.send_message(SMALL_BODY_LINES)

        self.assertTrue(reply.startswith(b"250"), reply)
        self.assertEqual(len(self.maildir_new()), 2)
        self.assertEqual(self.manager.queue_ids, [])
        self.assert_budget(DIRECT)

    def test_small_message_queued(self) -> None:
        """
        The same message through the queue (as when a direct delivery is
        not possible) costs 2 file creations, 2 writes, 2 file fsyncs, 3
        directory fsyncs, 2 renames and 1 unlink, and leaves the queue.
        """
        self.assertTrue(self.send_message(SMALL_BODY_LINES).startswith(b"250"))
        self.spool.on_direct = None
        self.counter.reset()

        reply = self.send_message(SMALL_BODY_LINES)

        self.assertTrue(reply.startswith(b"250"), reply)
        self.assertEqual(len(self.maildir_new()), 2)
        self.assertEqual(self.manager.queue_ids, [], "the message left the queue")
        self.assert_budget(QUEUED)

    def send_large_message(self) -> tuple[bytes, int]:
        """
        After a first small message (which makes the Maildir), a 1 MiB
        message arriving in 64 KiB pieces.

        @return: the body and the delivered file's size.
        """
        self.send_message(SMALL_BODY_LINES)
        self.counter.reset()
        line = b"y" * 1022 + b"\r\n"
        body = line * (LARGE_MESSAGE_SIZE // len(line))
        pieces = [body[i:i + LARGE_FEED_SIZE] for i in range(0, len(body), LARGE_FEED_SIZE)]
        self.assertTrue(self.send_message(pieces).startswith(b"250"))
        delivered_size = max(int(n.split(",S=")[1].split(",")[0]) for n in self.maildir_new())
        prefix = delivery_prefix(Mailbox("sender", "example.org"), Mailbox("alice", "example.test"))
        self.assertGreater(delivered_size - len(prefix), len(body))
        return body, delivered_size

    def test_large_message_writes_in_chunks(self) -> None:
        """
        A 1 MiB message for one local mailbox, arriving in 64 KiB pieces,
        is written straight into the Maildir (direct delivery) in chunks of
        128 KiB (not per piece, not per line), with one fsync, one rename,
        one sync of C{new/}, and nothing in the queue.
        """
        body, _ = self.send_large_message()

        writes = self.counter.total("write")
        # The Received: header and the body: one write per CHUNK_SIZE
        # gathered (a chunk closes at the first feed that reaches it), the
        # rest at the commit; the prefix shares the first.
        self.assertEqual(set(writes), {"maildir message"})
        self.assertLessEqual(writes["maildir message"], len(body) // SPOOL_WRITE_CHUNK + 1)
        self.assertGreaterEqual(writes["maildir message"], len(body) // (SPOOL_WRITE_CHUNK + LARGE_FEED_SIZE))
        self.assertEqual(self.counter.total("fsync"), Counter({"maildir message": 1, "maildir new/": 1}))
        self.assertEqual(self.counter.total("create"), Counter({"maildir message": 1}))
        self.assertEqual(sum(self.counter.total("rename").values()), 1)
        self.assertEqual(sum(self.counter.total("unlink").values()), 0)
        self.assert_none_outside_the_pool()

    def test_large_message_queued(self) -> None:
        """
        The same message through the queue (as for several mailboxes) is
        written to the spool in chunks of 128 KiB and copied to the
        Maildir in chunks of 64 KiB; fsyncs stay at one per file.
        """
        self.spool.on_stream = None
        body, delivered_size = self.send_large_message()

        writes = self.counter.total("write")
        self.assertLessEqual(writes["queue body"], len(body) // SPOOL_WRITE_CHUNK + 1)
        self.assertGreaterEqual(writes["queue body"], len(body) // (SPOOL_WRITE_CHUNK + LARGE_FEED_SIZE))
        # The envelope and trailer share the last body write.
        self.assertEqual(writes["queue envelope"], 0)
        # The prefix and the spooled message in COPY_CHUNK_SIZE writes (the
        # prefix fills the start of the first).
        self.assertEqual(writes["maildir message"], -(-delivered_size // MAILDIR_COPY_CHUNK))
        fsyncs = self.counter.total("fsync")
        self.assertEqual((fsyncs["queue body"], fsyncs["queue envelope"], fsyncs["maildir message"]), (1, 0, 1))
        self.assert_none_outside_the_pool()


class GroupCommitTests(BudgetMixin, SynchronousTestCase):
    """
    Commits and deliveries that happen while the disk is busy share their
    directory fsyncs.
    """

    def setUp(self) -> None:
        self.make_server(QueuedDiskPool)
        # Deliveries are tested on their own below.
        self.spool.on_commit = None
        self.spool.on_direct = None

    def test_commits_share_directory_fsyncs(self) -> None:
        """
        L{CONCURRENT_MESSAGES} messages committed at the same moment cost
        one file fsync for each queue file, but only one fsync of
        C{messages/}: a directory fsync waiting in the pool's queue takes
        every request made before a thread begins it (the first commit's
        request queued it behind the other commits' jobs).
        """
        committed: list[str] = []
        for n in range(CONCURRENT_MESSAGES):
            writer = self.spool.new_message()
            writer.write(b"Subject: %d\r\n\r\nbody\r\n" % n)
            envelope = Envelope(queue_id=writer.queue_id, sender=None, recipients=(
                Recipient(Mailbox("alice", "example.test"), Mailbox("alice", "example.test"), local=True),),
                arrival=self.clock.seconds(), size=0)
            writer.commit(envelope).addCallback(committed.append)
        self.counter.reset()

        self.disk.run_all()

        self.assertEqual(len(committed), CONCURRENT_MESSAGES)
        fsyncs = self.counter.total("fsync")
        self.assertEqual(fsyncs["queue body"], CONCURRENT_MESSAGES)
        self.assertEqual(fsyncs["queue envelope"], 0)
        self.assertEqual(fsyncs["queue messages/"], 1)
        self.assert_none_outside_the_pool()

    def test_direct_deliveries_share_directory_fsyncs(self) -> None:
        """
        L{CONCURRENT_MESSAGES} messages delivered directly at the same
        moment fsync each Maildir file once and C{new/} once in all, and
        touch nothing in the queue.
        """
        self.spool.on_direct = self.manager.deliver_direct
        alice = Mailbox("alice", "example.test")
        self.delivery.deliver_data(alice, b"", b"Subject: first\r\n\r\n")
        self.disk.run_all()
        committed: list[str] = []
        for n in range(CONCURRENT_MESSAGES):
            writer = self.spool.new_message()
            writer.write(b"Subject: %d\r\n\r\nbody\r\n" % n)
            envelope = Envelope(queue_id=writer.queue_id, sender=None, recipients=(
                Recipient(alice, alice, local=True),), arrival=self.clock.seconds(), size=0)
            writer.commit(envelope).addCallback(committed.append)
        self.counter.reset()

        self.disk.run_all()

        self.assertEqual(len(committed), CONCURRENT_MESSAGES)
        self.assertEqual(len(self.maildir_new()), CONCURRENT_MESSAGES + 1)
        fsyncs = self.counter.total("fsync")
        self.assertEqual(fsyncs, Counter({"maildir message": CONCURRENT_MESSAGES, "maildir new/": 1}))
        self.assertEqual(self.counter.total("create"), Counter({"maildir message": CONCURRENT_MESSAGES}))
        self.assert_none_outside_the_pool()

    def test_deliveries_share_directory_fsyncs(self) -> None:
        """
        L{CONCURRENT_MESSAGES} deliveries to one Maildir at the same moment
        fsync each message file once and C{new/} once in all.
        """
        source = os.path.join(self.root, "source")
        with open(source, "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")
        alice = Mailbox("alice", "example.test")
        self.delivery.deliver(alice, b"", source)
        self.disk.run_all()
        self.counter.reset()
        delivered: list[str] = []

        for _ in range(CONCURRENT_MESSAGES):
            self.delivery.deliver(alice, b"Delivered-To: alice@example.test\r\n", source).addCallback(delivered.append)
        self.disk.run_all()

        self.assertEqual(len(delivered), CONCURRENT_MESSAGES)
        fsyncs = self.counter.total("fsync")
        self.assertEqual(fsyncs["maildir message"], CONCURRENT_MESSAGES)
        self.assertEqual(fsyncs["maildir new/"], 1)
        self.assert_none_outside_the_pool()


@implementer(ICredentialsChecker)
class OnePasswordChecker:
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Deferred:
        if credentials.username == b"alice@example.test" and credentials.password == b"secret":
            return succeed("alice@example.test")
        return fail(UnauthorizedLogin())


class POP3BudgetTests(BudgetMixin, SynchronousTestCase):
    """
    A POP3 download reads the mailbox folders once, at login: each RETR
    opens its file and nothing else, and QUIT fsyncs each changed folder
    once.
    """

    messages = 5

    def setUp(self) -> None:
        self.make_server()
        self.maildir = os.path.join(self.root, "mail", "example.test", "alice")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(self.maildir, sub))
        self.factory = POP3Factory(
            OnePasswordChecker(), lambda avatar: self.maildir, self.disk,
            POP3Settings("mail.example.test"), clock=self.clock,
            log=Logger(observer=lambda e: None), locks=MailboxLocks(),
        )

    def put(self, sub: str, n: int, suffix: str = "") -> None:
        data = b"Subject: %d\r\n\r\nbody\r\n" % n
        name = f"{1_700_000_000 + n}.M{n}P1Q{n}.host,S={len(data)},W={len(data)}{suffix}"
        with open(os.path.join(self.maildir, sub, name), "wb") as f:
            f.write(data)

    def download(self) -> bytes:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol = self.factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(b"USER alice@example.test\r\nPASS secret\r\n")
        self.assertIn(b"+OK", transport.value())
        transport.clear()
        self.counter.reset()
        protocol.dataReceived(b"UIDL\r\n")
        for n in range(1, self.messages + 1):
            protocol.dataReceived(b"RETR %d\r\n" % n)
        self.transfer = Counter(self.counter.counts)
        self.counter.reset()
        for n in range(1, self.messages + 1):
            protocol.dataReceived(b"DELE %d\r\n" % n)
        protocol.dataReceived(b"QUIT\r\n")
        return transport.value()

    def test_retr_opens_only_its_file(self) -> None:
        """
        UIDL and every RETR of messages in C{new/}: one open per message,
        no folder listing, no stat; QUIT: one unlink per message and one
        fsync of C{new/}.
        """
        for n in range(self.messages):
            self.put("new", n)

        output = self.download()

        self.assertEqual(output.count(b"\r\n.\r\n"), self.messages + 1)
        self.assertEqual(self.transfer, Counter({("open", "maildir message"): self.messages}))
        self.assertEqual(self.counter.total("unlink"), Counter({"maildir message": self.messages}))
        self.assertEqual(self.counter.total("fsync"), Counter({"maildir new/": 1}))
        self.assert_none_outside_the_pool()

    def test_quit_lists_cur_once(self) -> None:
        """
        Deleting messages that live in C{cur/} (seen by an earlier
        session) lists C{cur/} at most once at QUIT, not once per message.
        """
        for n in range(self.messages):
            self.put("cur", n, ":2,S")

        self.download()

        self.assertEqual(self.counter.total("unlink"), Counter({"maildir message": self.messages}))
        self.assertLessEqual(self.counter.total("scandir")["maildir cur/"], 1)

    def test_quit_marks_seen_with_one_rename_each(self):
        """
        Messages retrieved and kept are moved to C{cur/} with the seen flag
        at QUIT: one rename each, no folder listing, one fsync of C{new/}
        and of C{cur/}; the reads cost one open per message, in the pool.
        """
        for n in range(self.messages):
            self.put("new", n)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol = self.factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(b"USER alice@example.test\r\nPASS secret\r\n")
        self.counter.reset()

        protocol.dataReceived(b"".join(b"RETR %d\r\n" % n for n in range(1, self.messages + 1)) + b"QUIT\r\n")

        self.assertTrue(transport.value().endswith(b"+OK Bye\r\n"))
        self.assertEqual(self.counter.total("open")["maildir message"], self.messages)
        self.assertEqual(sum(self.counter.total("rename").values()), self.messages)
        self.assertEqual(sum(self.counter.total("scandir").values()), 0)
        self.assertEqual(self.counter.total("fsync"), Counter({"maildir new/": 1, "maildir cur/": 1}))
        self.assert_none_outside_the_pool()
