# -*- test-case-name: tests.test_maildir -*-
"""
Tests for L{mailappliance.maildir}: where mailboxes live, unique names, and
durable delivery.
"""

import errno
import os
import re
import shutil

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailappliance import maildir
from mailappliance.address import Mailbox, parse_mailbox
from mailappliance.disk import DirectorySyncer, SynchronousDiskPool
from mailappliance.interfaces import DeliveryError, ILocalDelivery
from mailappliance.maildir import (
    COPY_CHUNK_SIZE,
    STALE_TMP_SECONDS,
    MaildirDelivery,
    deliver_file,
    deliver_to_maildir,
    ensure_maildir,
    maildir_path,
    remove_stale_tmp,
    unique_name,
)

ROOT = "/srv/mail"


class MaildirPathTests(SynchronousTestCase):
    def test_plain(self):
        """
        C{<root>/<domain>/<local>}, lower-cased.
        """
        self.assertEqual(maildir_path(ROOT, parse_mailbox("Alice@Example.TEST")), "/srv/mail/example.test/alice")

    def test_utf8(self):
        """
        Non-ASCII local parts stay as they are (lower-cased).
        """
        mailbox = parse_mailbox("Jörg@example.test", allow_utf8=True)
        self.assertEqual(maildir_path(ROOT, mailbox), "/srv/mail/example.test/jörg")

    def test_hostile(self):
        """
        Local parts that would climb out of the mail root, hide the folder,
        split it, or collide with an escape are percent-encoded; the result
        is always two levels below the root.
        """
        cases = {
            "..": "%2E.",
            ".": "%2E",
            "../x": "%2E.%2Fx",
            "a/b": "a%2Fb",
            "a\\b": "a%5Cb",
            ".hidden": "%2Ehidden",
            "a.b": "a.b",
            "100%": "100%25",
            "nul\x00here": "nul%00here",
            "line\nbreak\x7f": "line%0Abreak%7F",
            '"../x"': '"..%2Fx"',
        }
        for local, expected in cases.items():
            path = maildir_path(ROOT, Mailbox(local, "example.test"))
            self.assertEqual(path, "/srv/mail/example.test/" + expected, local)
            self.assertEqual(os.path.dirname(os.path.dirname(os.path.normpath(path))), ROOT, local)

    def test_parsed_hostile(self):
        """
        Addresses a client can really send (C{/} is atext; quoted strings
        may hold anything printable) stay inside the root.
        """
        for text in ["a/b@example.test", '"../../etc"@example.test', '"..\\/x"@example.test']:
            path = maildir_path(ROOT, parse_mailbox(text))
            self.assertEqual(os.path.dirname(os.path.dirname(os.path.normpath(path))), ROOT, text)
            self.assertNotIn("/", os.path.basename(path))

    def test_hostile_domain(self):
        """
        The domain is escaped the same way.
        """
        self.assertEqual(maildir_path(ROOT, Mailbox("a", "..")), "/srv/mail/%2E./a")

    def test_distinct(self):
        """
        Escaping is injective: different local parts give different
        folders.
        """
        locals_ = ["a/b", "a%2Fb", "a%252Fb", ".x", "%2Ex"]
        paths = {maildir_path(ROOT, Mailbox(l, "example.test")) for l in locals_}
        self.assertEqual(len(paths), len(locals_))


class UniqueNameTests(SynchronousTestCase):
    def test_format(self):
        """
        C{<sec>.M<usec>P<pid>Q<n>.<host>}, with the pid read now and a
        per-process counter.
        """
        first = unique_name("mx.example.test", now=lambda: 1700000000.25)
        second = unique_name("mx.example.test", now=lambda: 1700000000.25)
        pattern = r"1700000000\.M250000P%d Q(\d+)\.mx\.example\.test".replace(" ", "") % os.getpid()
        n1 = int(re.fullmatch(pattern, first).group(1))
        n2 = int(re.fullmatch(pattern, second).group(1))
        self.assertEqual(n2, n1 + 1)

    def test_pid_read_each_time(self):
        """
        The pid is not cached at import time (it changes when twistd
        forks).
        """
        self.patch(os, "getpid", lambda: 4242)
        self.assertIn("P4242Q", unique_name("h", now=lambda: 1.0))

    def test_host_escaped(self):
        """
        C{/}, C{:} and C{,} in the host name are written as octal escapes.
        """
        name = unique_name("a/b:c,d", now=lambda: 1.5)
        self.assertTrue(name.endswith(".a\\057b\\072c\\054d"), name)
        self.assertNotIn(":", name)
        self.assertNotIn(",", name)


class FilesystemTestCase(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.box = os.path.join(self.root, "example.test", "alice")

    def source(self, data):
        path = os.path.join(self.root, "source")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def listing(self, sub):
        return sorted(os.listdir(os.path.join(self.box, sub)))


class StaleTmpTests(FilesystemTestCase):
    def test_removes_only_stale_files(self):
        """
        L{remove_stale_tmp} removes the files in C{tmp/} untouched for
        more than 36 hours, keeps younger ones and folders, and says how
        many it removed; L{ensure_maildir} runs it.
        """
        ensure_maildir(self.box)
        tmp = os.path.join(self.box, "tmp")
        now = 1_800_000_000.0
        for name, age in (("old", STALE_TMP_SECONDS + 60), ("young", STALE_TMP_SECONDS - 60)):
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(b"partial")
            os.utime(path, (now - age, now - age))
        os.mkdir(os.path.join(tmp, "folder"))
        os.utime(os.path.join(tmp, "folder"), (0, 0))
        self.assertEqual(remove_stale_tmp(self.box, now), 1)
        self.assertEqual(self.listing("tmp"), ["folder", "young"])
        os.utime(os.path.join(tmp, "young"), (0, 0))
        ensure_maildir(self.box)
        self.assertEqual(self.listing("tmp"), ["folder"])

    def test_missing_folder(self):
        """
        A Maildir without C{tmp/} (or none at all) is not an error.
        """
        self.assertEqual(remove_stale_tmp(self.box), 0)


class EnsureMaildirTests(FilesystemTestCase):
    def test_creates(self):
        """
        The Maildir and its parents are created with C{cur/ new/ tmp/},
        mode 0700; doing it again changes nothing.
        """
        ensure_maildir(self.box)
        ensure_maildir(self.box)
        self.assertEqual(sorted(os.listdir(self.box)), ["cur", "new", "tmp"])
        for path in [self.box, os.path.join(self.box, "new"), os.path.dirname(self.box)]:
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o700, path)

    def test_syncs_parents(self):
        """
        Each new folder is made durable by fsyncing its parent.
        """
        synced = []
        self.patch(maildir, "fsync_directory", synced.append)
        import mailappliance.disk

        self.patch(mailappliance.disk, "fsync_directory", synced.append)
        ensure_maildir(self.box)
        self.assertEqual(synced, [self.root, os.path.dirname(self.box), self.box])

    def test_file_in_the_way(self):
        """
        A file where the Maildir or a subfolder should be is an error.
        """
        os.makedirs(os.path.dirname(self.box))
        with open(self.box, "w"):
            pass
        self.assertRaises(NotADirectoryError, ensure_maildir, self.box)
        other = os.path.join(self.root, "example.test", "bob")
        os.makedirs(other)
        with open(os.path.join(other, "new"), "w"):
            pass
        self.assertRaises(NotADirectoryError, ensure_maildir, other)


class DeliverFileTests(FilesystemTestCase):
    def setUp(self):
        super().setUp()
        ensure_maildir(self.box)

    def test_byte_exact(self):
        """
        The delivered file is the prefix followed by the source, byte for
        byte: lines starting with dots, 8-bit bytes, no header, no trailing
        newline, CR LF kept as they are.
        """
        body = b".\r\n..double\r\n\x00\x80\xff\xfe 8-bit \xc3\xa9\r\nno end"
        prefix = b"Return-Path: <a@b>\r\nDelivered-To: <c@d>\r\n"
        final = deliver_file(self.box, prefix, self.source(body), "mx.example.test")
        self.assertEqual(os.path.dirname(final), os.path.join(self.box, "new"))
        with open(final, "rb") as f:
            self.assertEqual(f.read(), prefix + body)
        size = len(prefix) + len(body)
        self.assertTrue(final.endswith(f",S={size},W={size}"), final)
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.listing("new"), [os.path.basename(final)])
        self.assertEqual(os.stat(final).st_mode & 0o777, 0o600)

    def test_empty_prefix_and_body(self):
        """
        An empty source and prefix give an empty file of size 0.
        """
        final = deliver_file(self.box, b"", self.source(b""), "h")
        self.assertTrue(final.endswith(",S=0,W=0"))
        self.assertEqual(os.path.getsize(final), 0)

    def test_large_in_chunks(self):
        """
        A source larger than the copy chunk is copied in full, in order,
        with reads of at most L{COPY_CHUNK_SIZE}.
        """
        body = b"".join(bytes([i % 256]) * 1000 for i in range(700))
        self.assertGreater(len(body), 3 * COPY_CHUNK_SIZE)
        writes = []
        real_write = os.write

        def recording_write(fd, data):
            writes.append(len(data))
            return real_write(fd, data)

        self.patch(os, "write", recording_write)
        final = deliver_file(self.box, b"X: y\r\n", self.source(body), "h")
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"X: y\r\n" + body)
        self.assertLessEqual(max(writes), COPY_CHUNK_SIZE)

    def test_fsync_before_rename(self):
        """
        The file is fsynced in C{tmp/} before it is renamed into C{new/}.
        """
        ops = []
        real_fsync, real_rename = os.fsync, os.rename
        self.patch(os, "fsync", lambda fd: (ops.append("fsync"), real_fsync(fd)))
        self.patch(os, "rename", lambda a, b: (ops.append(("rename", os.path.basename(os.path.dirname(a)), os.path.basename(os.path.dirname(b)))), real_rename(a, b)))
        deliver_file(self.box, b"", self.source(b"x"), "h")
        self.assertEqual(ops, ["fsync", ("rename", "tmp", "new")])

    def test_failure_leaves_nothing(self):
        """
        An error while writing removes the file from C{tmp/} and raises.
        """

        def broken(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "fsync", broken)
        error = self.assertRaises(OSError, deliver_file, self.box, b"", self.source(b"x"), "h")
        self.assertEqual(error.errno, errno.ENOSPC)
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.listing("new"), [])

    def test_source_missing(self):
        """
        A missing source raises before anything is created.
        """
        self.assertRaises(FileNotFoundError, deliver_file, self.box, b"", os.path.join(self.root, "nope"), "h")
        self.assertEqual(self.listing("tmp"), [])

    def test_prefix_shares_first_write(self):
        """
        A message smaller than L{COPY_CHUNK_SIZE} is written with one
        C{write}, prefix included; a prefix of a whole chunk or more is
        written on its own, then the source.
        """
        writes = []
        real_write = os.write

        def recording_write(fd, data):
            writes.append(bytes(data))
            return real_write(fd, data)

        self.patch(os, "write", recording_write)
        deliver_file(self.box, b"P: 1\r\n", self.source(b"body\r\n"), "h")
        self.assertEqual(writes, [b"P: 1\r\nbody\r\n"])

        del writes[:]
        prefix = b"P" * COPY_CHUNK_SIZE
        final = deliver_file(self.box, prefix, self.source(b"body\r\n"), "h")
        self.assertEqual(writes, [prefix, b"body\r\n"])
        with open(final, "rb") as f:
            self.assertEqual(f.read(), prefix + b"body\r\n")

    def test_chunk_boundaries(self):
        """
        Prefix plus source of exactly one chunk, and one byte more or less,
        arrive whole, in writes of at most L{COPY_CHUNK_SIZE}.
        """
        prefix = b"Delivered-To: a@b\r\n"
        for extra in (-1, 0, 1, COPY_CHUNK_SIZE):
            body = bytes(range(256)) * ((COPY_CHUNK_SIZE + extra - len(prefix)) // 256)
            body += b"z" * ((COPY_CHUNK_SIZE + extra - len(prefix)) % 256)
            final = deliver_file(self.box, prefix, self.source(body), "h")
            with open(final, "rb") as f:
                self.assertEqual(f.read(), prefix + body, extra)
            self.assertTrue(final.endswith(f",S={len(prefix) + len(body)},W={len(prefix) + len(body)}"))

    def test_two_deliveries(self):
        """
        Two deliveries of the same source make two distinct files.
        """
        source = self.source(b"same")
        first = deliver_file(self.box, b"", source, "h")
        second = deliver_file(self.box, b"", source, "h")
        self.assertNotEqual(first, second)
        self.assertEqual(len(self.listing("new")), 2)


class BodySizeTests(FilesystemTestCase):
    """
    A queue file of layout version 2 holds the body, then the envelope and
    its trailer: only the first C{body_size} bytes may reach a mailbox.
    """

    TAIL = b'{"version": 1, "queue_id": "X"}MAQ2 0000000031 00000000\n'

    def setUp(self):
        super().setUp()
        ensure_maildir(self.box)

    def test_stops_at_body_size(self):
        """
        With C{body_size}, exactly that many bytes of the source follow the
        prefix; the name's sizes count them.
        """
        body = b"Subject: s\r\n\r\nbody\r\n"
        final = deliver_file(self.box, b"P: 1\r\n", self.source(body + self.TAIL), "h", body_size=len(body))
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"P: 1\r\n" + body)
        size = len(b"P: 1\r\n" + body)
        self.assertTrue(final.endswith(f",S={size},W={size}"))

    def test_chunk_boundaries(self):
        """
        Bodies of about one and two chunks, followed by an envelope, are
        cut exactly at C{body_size}, in writes of at most
        L{COPY_CHUNK_SIZE}.
        """
        prefix = b"Delivered-To: a@b\r\n"
        writes = []
        real_write = os.write

        def recording_write(fd, data):
            writes.append(len(data))
            return real_write(fd, data)

        self.patch(os, "write", recording_write)
        for length in (0, 1, COPY_CHUNK_SIZE - len(prefix) - 1, COPY_CHUNK_SIZE - len(prefix),
                       COPY_CHUNK_SIZE, 2 * COPY_CHUNK_SIZE + 7):
            body = (bytes(range(256)) * (length // 256 + 1))[:length]
            del writes[:]
            final = deliver_file(self.box, prefix, self.source(body + self.TAIL), "h", body_size=length)
            with open(final, "rb") as f:
                self.assertEqual(f.read(), prefix + body, length)
            self.assertLessEqual(max(writes), COPY_CHUNK_SIZE)
            self.assertEqual(sum(writes), len(prefix) + length)

    def test_source_shorter_than_body_size(self):
        """
        A source shorter than C{body_size} (a damaged queue file) raises
        C{EIO} and delivers nothing, rather than a truncated message.
        """
        error = self.assertRaises(OSError, deliver_file, self.box, b"", self.source(b"short"), "h", body_size=6)
        self.assertEqual(error.errno, errno.EIO)
        self.assertEqual(self.listing("new"), [])
        self.assertEqual(self.listing("tmp"), [])

    def test_delivery_passes_body_size(self):
        """
        L{MaildirDelivery.deliver} with C{body_size} delivers only the body.
        """
        disk = SynchronousDiskPool()
        delivery = MaildirDelivery(self.root, "h", disk, DirectorySyncer(disk, fsync=lambda path: None))
        final = self.successResultOf(delivery.deliver(parse_mailbox("alice@example.test"), b"P: 1\r\n",
                                                      self.source(b"hello\r\n" + self.TAIL), 7))
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"P: 1\r\nhello\r\n")


class MaildirDeliveryTests(FilesystemTestCase):
    def setUp(self):
        super().setUp()
        self.synced = []
        disk = SynchronousDiskPool()
        self.delivery = MaildirDelivery(self.root, "mx.example.test", disk, DirectorySyncer(disk, fsync=self.synced.append))
        self.alice = parse_mailbox("Alice@example.test")

    def test_interface(self):
        """
        L{MaildirDelivery} provides L{ILocalDelivery}.
        """
        self.assertTrue(verifyObject(ILocalDelivery, self.delivery))

    def test_first_delivery(self):
        """
        The first delivery creates the Maildir; the result is the delivered
        file's path, fired after C{new/} was synced.
        """
        final = self.successResultOf(self.delivery.deliver(self.alice, b"P: 1\r\n", self.source(b"hello\r\n")))
        self.assertEqual(self.listing("new"), [os.path.basename(final)])
        self.assertEqual(self.synced[-1], os.path.join(self.box, "new"))
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"P: 1\r\nhello\r\n")

    def test_path_is_a_file(self):
        """
        A file where the Maildir should be is a permanent failure.
        """
        os.makedirs(os.path.dirname(self.box))
        with open(self.box, "w"):
            pass
        failure = self.failureResultOf(self.delivery.deliver(self.alice, b"", self.source(b"x")), DeliveryError)
        self.assertTrue(failure.value.permanent)
        self.assertIn("Not a directory", failure.value.reason)

    def test_disk_full(self):
        """
        ENOSPC and EIO are temporary failures.
        """
        ensure_maildir(self.box)
        for code in (errno.ENOSPC, errno.EIO):

            def broken(fd, code=code):
                raise OSError(code, os.strerror(code))

            self.patch(os, "fsync", broken)
            failure = self.failureResultOf(self.delivery.deliver(self.alice, b"", self.source(b"x")), DeliveryError)
            self.assertFalse(failure.value.permanent)
            self.assertIn(os.strerror(code), failure.value.reason)
            self.assertEqual(self.listing("tmp"), [])

    def test_directory_sync_fails(self):
        """
        A failed fsync of C{new/} is a temporary failure.
        """

        def broken(path):
            raise OSError(errno.EIO, "Input/output error")

        disk = SynchronousDiskPool()
        delivery = MaildirDelivery(self.root, "h", disk, DirectorySyncer(disk, fsync=broken))
        failure = self.failureResultOf(delivery.deliver(self.alice, b"", self.source(b"x")), DeliveryError)
        self.assertFalse(failure.value.permanent)

    def test_deliver_data(self):
        """
        L{MaildirDelivery.deliver_data} delivers a message given in memory
        as L{MaildirDelivery.deliver} does from a file: Maildir made, one
        file in C{new/} with the prefix, sizes in the name, C{new/} synced.
        """
        final = self.successResultOf(self.delivery.deliver_data(self.alice, b"P: 1\r\n", b"hello\r\n"))
        self.assertEqual(self.listing("new"), [os.path.basename(final)])
        self.assertTrue(final.endswith(",S=13,W=13"), final)
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.synced[-1], os.path.join(self.box, "new"))
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"P: 1\r\nhello\r\n")

    def test_withdraw(self):
        """
        L{MaildirDelivery.withdraw} removes a copy just delivered and syncs
        C{new/}; a copy already gone is no error.
        """
        final = self.successResultOf(self.delivery.deliver_data(self.alice, b"", b"hello\r\n"))
        del self.synced[:]
        self.successResultOf(self.delivery.withdraw(final))
        self.assertEqual(self.listing("new"), [])
        self.assertEqual(self.synced, [os.path.join(self.box, "new")])
        self.successResultOf(self.delivery.withdraw(final))
        self.assertEqual(self.synced, [os.path.join(self.box, "new")])

    def test_deliver_data_failures(self):
        """
        L{MaildirDelivery.deliver_data} fails as L{MaildirDelivery.deliver}
        does: a full disk is temporary and leaves nothing in C{tmp/}; a
        file in the way is permanent.
        """
        ensure_maildir(self.box)
        self.patch(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
        failure = self.failureResultOf(self.delivery.deliver_data(self.alice, b"", b"x"), DeliveryError)
        self.assertFalse(failure.value.permanent)
        self.assertEqual((self.listing("tmp"), self.listing("new")), ([], []))

        bob = parse_mailbox("bob@example.test")
        with open(os.path.join(self.root, "example.test", "bob"), "w"):
            pass
        failure = self.failureResultOf(self.delivery.deliver_data(bob, b"", b"x"), DeliveryError)
        self.assertTrue(failure.value.permanent)

    def test_stream(self):
        """
        L{MaildirDelivery.open_stream}: the first write makes the Maildir
        and C{tmp/<unique>} with the prefix; L{MaildirStream.finish_blocking}
        renames it into C{new/} with its size; L{MaildirStream.published}
        syncs C{new/} and fires with the path.
        """
        stream = self.delivery.open_stream(self.alice, b"P: 1\r\n")
        stream.write_blocking(b"hello ")
        self.assertEqual(len(self.listing("tmp")), 1)
        stream.write_blocking(b"world\r\n")
        final = stream.finish_blocking()
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.listing("new"), [os.path.basename(final)])
        self.assertTrue(final.endswith(",S=19,W=19"), final)
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"P: 1\r\nhello world\r\n")
        self.assertEqual(self.successResultOf(stream.published(final)), final)
        self.assertEqual(self.synced[-1], os.path.join(self.box, "new"))

    def test_stream_empty_and_discard(self):
        """
        A stream finished without writes holds the prefix alone; a
        discarded one leaves nothing, and discarding twice is harmless.
        """
        final = self.delivery.open_stream(self.alice, b"P: 1\r\n").finish_blocking()
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"P: 1\r\n")
        stream = self.delivery.open_stream(self.alice, b"P: 2\r\n")
        stream.write_blocking(b"partial")
        stream.discard_blocking()
        stream.discard_blocking()
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(len(self.listing("new")), 1)

    def test_stream_to_removed_maildir(self):
        """
        A stream to a remembered Maildir that was removed since makes it
        again.
        """
        self.successResultOf(self.delivery.deliver_data(self.alice, b"", b"first\r\n"))
        shutil.rmtree(self.box)
        stream = self.delivery.open_stream(self.alice, b"")
        stream.write_blocking(b"again\r\n")
        final = stream.finish_blocking()
        self.assertEqual(self.listing("new"), [os.path.basename(final)])

    def test_body_missing(self):
        """
        A spooled body that has disappeared is a permanent failure.
        """
        missing = os.path.join(self.root, "gone")
        failure = self.failureResultOf(self.delivery.deliver(self.alice, b"", missing), DeliveryError)
        self.assertTrue(failure.value.permanent)
        self.assertIn("body missing", failure.value.reason)


class RememberedMaildirTests(FilesystemTestCase):
    """
    L{MaildirDelivery} makes sure of a Maildir's folders on the first
    delivery only, and makes them again if they were removed.
    """

    def setUp(self):
        super().setUp()
        disk = SynchronousDiskPool()
        self.synced = []
        self.delivery = MaildirDelivery(self.root, "mx.example.test", disk,
                                        DirectorySyncer(disk, fsync=self.synced.append))
        self.alice = parse_mailbox("alice@example.test")
        self.calls = []
        for name in ("mkdir", "stat"):
            self.patch(os, name, self.counting(name, getattr(os, name)))

    def counting(self, name, real):
        def call(*args, **kwargs):
            self.calls.append(name)
            return real(*args, **kwargs)

        return call

    def deliver(self, body=b"x\r\n"):
        return self.successResultOf(self.delivery.deliver(self.alice, b"", self.source(body)))

    def test_second_delivery_checks_no_folder(self):
        """
        The first delivery creates the Maildir; the next ones make no
        C{mkdir} and no C{stat}.
        """
        self.deliver()
        self.assertIn("mkdir", self.calls)
        del self.calls[:]

        self.deliver()
        self.deliver()

        self.assertEqual(self.calls, [])
        self.assertEqual(len(self.listing("new")), 3)

    def test_maildir_removed(self):
        """
        A Maildir removed after a delivery (an administrator's C{rm -r})
        is made again by the next delivery, which succeeds.
        """
        self.deliver()
        shutil.rmtree(self.box)

        final = self.deliver(b"again\r\n")

        self.assertEqual(self.listing("new"), [os.path.basename(final)])
        self.assertEqual(sorted(os.listdir(self.box)), ["cur", "new", "tmp"])
        self.assertEqual(self.listing("tmp"), [])
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"again\r\n")

    def test_maildir_removed_direct(self):
        """
        A delivery from memory to a remembered Maildir that was removed
        makes it again (a missing file is never a missing source here).
        """
        self.deliver()
        shutil.rmtree(self.box)

        final = self.successResultOf(self.delivery.deliver_data(self.alice, b"", b"again\r\n"))

        self.assertEqual(self.listing("new"), [os.path.basename(final)])
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"again\r\n")

    def test_tmp_removed(self):
        """
        A missing C{tmp/} alone is made again too.
        """
        self.deliver()
        os.rmdir(os.path.join(self.box, "tmp"))

        self.deliver()

        self.assertEqual(len(self.listing("new")), 2)
        self.assertEqual(self.listing("tmp"), [])

    def test_new_removed_before_rename(self):
        """
        C{new/} vanishing between the write and the rename (C{ENOENT} from
        the rename) costs one more try, which delivers one file and leaves
        nothing in C{tmp/}.
        """
        ensure_maildir(self.box)
        real_rename = os.rename
        renames = []

        def rename(a, b):
            if not renames:
                shutil.rmtree(os.path.join(self.box, "new"))
            renames.append(os.path.basename(os.path.dirname(b)))
            return real_rename(a, b)

        self.patch(os, "rename", rename)
        final = deliver_to_maildir(self.box, b"", self.source(b"x"), "h", known=True)

        self.assertEqual(renames, ["new", "new"])
        self.assertEqual(self.listing("new"), [os.path.basename(final)])
        self.assertEqual(self.listing("tmp"), [])

    def test_retried_once_only(self):
        """
        If the retry meets C{ENOENT} again the delivery fails, temporarily,
        and the Maildir is forgotten: the next delivery checks its folders.
        """
        self.deliver()

        def rename(a, b):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", a)

        self.patch(os, "rename", rename)
        attempts = []
        real_create = maildir._create_tmp
        self.patch(maildir, "_create_tmp", lambda *a: attempts.append(1) or real_create(*a))
        failure = self.failureResultOf(self.delivery.deliver(self.alice, b"", self.source(b"x")), DeliveryError)

        self.assertFalse(failure.value.permanent)
        self.assertEqual(len(attempts), 2)
        self.assertEqual(self.listing("tmp"), [])
        self.assertNotIn(self.box, self.delivery._known)

    def test_forgotten_after_failure(self):
        """
        After a failed delivery the next one makes sure of the folders
        again.
        """
        self.deliver()

        def broken(fd):
            raise OSError(errno.EIO, "Input/output error")

        real_fsync = os.fsync
        self.patch(os, "fsync", broken)
        self.failureResultOf(self.delivery.deliver(self.alice, b"", self.source(b"x")), DeliveryError)
        self.patch(os, "fsync", real_fsync)
        del self.calls[:]

        self.deliver()

        self.assertIn("mkdir", self.calls)

    def test_body_missing_not_retried(self):
        """
        A missing spooled body of a delivery to a known Maildir is a
        permanent failure, without another try or a look at the folders.
        """
        self.deliver()
        del self.calls[:]

        missing = os.path.join(self.root, "gone")
        failure = self.failureResultOf(self.delivery.deliver(self.alice, b"", missing), DeliveryError)

        self.assertTrue(failure.value.permanent)
        self.assertIn("body missing", failure.value.reason)
        self.assertEqual(self.calls, [])

    def test_memory_bounded(self):
        """
        At most L{maildir.MAX_REMEMBERED_MAILDIRS} Maildirs are remembered;
        past that the memory starts again, and deliveries still succeed.
        """
        self.patch(maildir, "MAX_REMEMBERED_MAILDIRS", 2)
        boxes = [parse_mailbox(f"user{n}@example.test") for n in range(5)]
        for box in boxes:
            self.successResultOf(self.delivery.deliver(box, b"", self.source(b"x")))
            self.assertLessEqual(len(self.delivery._known), 2)
        for box in boxes:
            path = maildir_path(self.root, box)
            self.assertEqual(len(os.listdir(os.path.join(path, "new"))), 1)
