"""
Tests for L{mailappliance.pop3.mailbox}: the snapshot, UIDs, lookups and
the UPDATE state, on real temporary Maildirs.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.pop3.mailbox import (
    MAX_UID_LENGTH,
    MessageInfo,
    apply_update,
    find_message,
    open_message,
    read_message_start,
    read_message_starts,
    scan_mailbox,
    uid_for,
    unique_part,
)


def make_maildir(root: str) -> str:
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    return root


def put(mailbox: str, sub: str, name: str, data: bytes) -> str:
    path = os.path.join(mailbox, sub, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


class UidTests(SynchronousTestCase):
    def test_plain(self):
        """
        A unique part of printable ASCII up to 70 characters is its own UID.
        """
        self.assertEqual(uid_for("1700000000.M5P9Q1.host,S=10,W=10"), "1700000000.M5P9Q1.host,S=10,W=10")
        self.assertEqual(uid_for("x" * MAX_UID_LENGTH), "x" * MAX_UID_LENGTH)

    def test_hashed(self):
        """
        Too long, spaces, control or non-ASCII characters: a SHA-256 hex
        digest, the same every time, different for different names.
        """
        for unique in ["x" * (MAX_UID_LENGTH + 1), "has space", "tab\there", "caf\u00e9", "del\x7f"]:
            uid = uid_for(unique)
            self.assertEqual(len(uid), 64)
            self.assertEqual(uid, uid_for(unique))
            self.assertTrue(all(0x21 <= ord(c) <= 0x7E for c in uid))
        self.assertNotEqual(uid_for("a b"), uid_for("a  b"))

    def test_unique_part(self):
        """
        The unique part is what comes before the info.
        """
        self.assertEqual(unique_part("123.M1P2Q3.h,S=5:2,RS"), "123.M1P2Q3.h,S=5")
        self.assertEqual(unique_part("123.M1P2Q3.h"), "123.M1P2Q3.h")


class ScanTests(SynchronousTestCase):
    def setUp(self):
        self.mailbox = make_maildir(self.mktemp())

    def test_missing_mailbox(self):
        """
        A mailbox that does not exist yet (no mail so far) is empty.
        """
        self.assertEqual(scan_mailbox(os.path.join(self.mktemp(), "nobody")), [])

    def test_missing_subfolder(self):
        """
        A missing cur/ is no error.
        """
        os.rmdir(os.path.join(self.mailbox, "cur"))
        put(self.mailbox, "new", "1.M1P1Q1.h", b"a\r\n")
        self.assertEqual([m.unique for m in scan_mailbox(self.mailbox)], ["1.M1P1Q1.h"])

    def test_stale_tmp_removed(self):
        """
        The snapshot removes leftovers in C{tmp/} older than 36 hours (a
        delivery that died), and leaves a young file (one in progress).
        """
        put(self.mailbox, "tmp", "old", b"partial")
        put(self.mailbox, "tmp", "young", b"partial")
        os.utime(os.path.join(self.mailbox, "tmp", "old"), (1, 1))
        self.assertEqual(scan_mailbox(self.mailbox), [])
        self.assertEqual(os.listdir(os.path.join(self.mailbox, "tmp")), ["young"])

    def test_order_and_sizes(self):
        """
        Oldest first by the time in the name (seconds, then microseconds);
        W= gives the size; files without it are measured with CRLF line
        ends; hidden files, folders and tmp/ are skipped.
        """
        put(self.mailbox, "new", "20.M5P1Q1.h,S=3,W=999", b"a\r\n")
        put(self.mailbox, "cur", "10.M99P1Q1.h:2,S", b"line\nline\n")
        put(self.mailbox, "cur", "10.M100P1Q1.h:2,", b"x")
        put(self.mailbox, "new", ".hidden", b"x")
        put(self.mailbox, "tmp", "5.M1P1Q1.h", b"x")
        os.mkdir(os.path.join(self.mailbox, "new", "adir"))
        snapshot = scan_mailbox(self.mailbox)
        self.assertEqual(
            [(m.unique, m.size) for m in snapshot],
            [("10.M99P1Q1.h", 12), ("10.M100P1Q1.h", 3), ("20.M5P1Q1.h,S=3,W=999", 999)],
        )
        self.assertEqual(snapshot[0].path, os.path.join(self.mailbox, "cur", "10.M99P1Q1.h:2,S"))

    def test_duplicate_unique(self):
        """
        The same unique part in new/ and cur/ is listed once (the cur/
        copy), so UIDs stay unique.
        """
        put(self.mailbox, "new", "1.M1P1Q1.h", b"a\r\n")
        put(self.mailbox, "cur", "1.M1P1Q1.h:2,S", b"a\r\n")
        snapshot = scan_mailbox(self.mailbox)
        self.assertEqual(len(snapshot), 1)
        self.assertIn(os.sep + "cur" + os.sep, snapshot[0].path)

    def test_uids_stable_and_unique(self):
        """
        UIDs are unique in a mailbox and unchanged after the message moves
        to cur/ with flags.
        """
        names = ["1.M1P1Q1.h", "1.M1P1Q2.h", "x" * 100, "y" * 100]
        for name in names:
            put(self.mailbox, "new", name, b"a\r\n")
        before = {m.unique: m.uid for m in scan_mailbox(self.mailbox)}
        self.assertEqual(len(set(before.values())), 4)
        os.rename(os.path.join(self.mailbox, "new", "x" * 100), os.path.join(self.mailbox, "cur", "x" * 100 + ":2,S"))
        os.rename(os.path.join(self.mailbox, "new", "1.M1P1Q1.h"), os.path.join(self.mailbox, "cur", "1.M1P1Q1.h:2,FS"))
        after = {m.unique: m.uid for m in scan_mailbox(self.mailbox)}
        self.assertEqual(before, after)


class FindAndOpenTests(SynchronousTestCase):
    def setUp(self):
        self.mailbox = make_maildir(self.mktemp())

    def test_renamed_by_other_reader(self):
        """
        A message whose flags another reader changed in cur/ is found by
        its unique part and opened.
        """
        put(self.mailbox, "cur", "1.M1P1Q1.h:2,", b"hello\r\n")
        (message,) = scan_mailbox(self.mailbox)
        os.rename(message.path, os.path.join(self.mailbox, "cur", "1.M1P1Q1.h:2,RS"))
        self.assertEqual(find_message(self.mailbox, "1.M1P1Q1.h"), os.path.join(self.mailbox, "cur", "1.M1P1Q1.h:2,RS"))
        with open_message(self.mailbox, message) as f:
            self.assertEqual(f.read(), b"hello\r\n")

    def test_moved_new_to_cur(self):
        """
        A message moved from new/ to cur/ is followed.
        """
        put(self.mailbox, "new", "1.M1P1Q1.h", b"hello\r\n")
        (message,) = scan_mailbox(self.mailbox)
        os.rename(message.path, os.path.join(self.mailbox, "cur", "1.M1P1Q1.h:2,S"))
        with open_message(self.mailbox, message) as f:
            self.assertEqual(f.read(), b"hello\r\n")

    def test_gone(self):
        """
        A removed message opens as L{None}; a prefix of another unique part
        does not match.
        """
        put(self.mailbox, "cur", "1.M1P1Q10.h:2,", b"other\r\n")
        message = MessageInfo("1.M1P1Q1.h", "1.M1P1Q1.h", 5, os.path.join(self.mailbox, "new", "1.M1P1Q1.h"))
        self.assertIsNone(open_message(self.mailbox, message))
        self.assertIsNone(find_message(self.mailbox, "1.M1P1Q1.h"))


class ReadStartTests(SynchronousTestCase):
    def setUp(self):
        self.mailbox = make_maildir(self.mktemp())

    def test_shorter_than_limit(self):
        """
        A file shorter than the limit is read whole and closed.
        """
        put(self.mailbox, "new", "1.M1P1Q1.h", b"hello\r\n")
        (message,) = scan_mailbox(self.mailbox)
        start = read_message_start(self.mailbox, message, 8)
        self.assertEqual((start.data, start.rest), (b"hello\r\n", None))

    def test_exactly_the_limit(self):
        """
        A file as long as the limit may go on: it is left open after the
        bytes read, for the caller to read on (and find nothing more).
        """
        put(self.mailbox, "new", "1.M1P1Q1.h", b"hello\r\n")
        (message,) = scan_mailbox(self.mailbox)
        start = read_message_start(self.mailbox, message, 7)
        self.addCleanup(start.rest.close)
        self.assertEqual(start.data, b"hello\r\n")
        self.assertEqual(start.rest.read(), b"")

    def test_follows_and_gone(self):
        """
        A message renamed by another reader is followed; one removed reads
        as L{None}.
        """
        put(self.mailbox, "cur", "1.M1P1Q1.h:2,", b"one\r\n")
        put(self.mailbox, "cur", "2.M1P1Q1.h:2,", b"two\r\n")
        first, second = scan_mailbox(self.mailbox)
        os.rename(first.path, first.path + "S")
        os.unlink(second.path)
        self.assertEqual(read_message_start(self.mailbox, first, 100).data, b"one\r\n")
        self.assertIsNone(read_message_start(self.mailbox, second, 100))

    def test_several(self):
        """
        Several starts in one call: each its own outcome, an error among
        them included.
        """
        put(self.mailbox, "new", "1.M1P1Q1.h", b"one\r\n")
        put(self.mailbox, "new", "2.M1P1Q1.h", b"two\r\n")
        put(self.mailbox, "new", "3.M1P1Q1.h", b"three\r\n")
        one, two, three = scan_mailbox(self.mailbox)
        os.unlink(two.path)
        os.mkdir(two.path)
        os.unlink(three.path)
        starts = read_message_starts(self.mailbox, [(one, 100), (two, 100), (three, 100)])
        self.assertEqual(starts[0].data, b"one\r\n")
        self.assertIsInstance(starts[1], IsADirectoryError)
        self.assertIsNone(starts[2])


class ApplyUpdateTests(SynchronousTestCase):
    def setUp(self):
        self.mailbox = make_maildir(self.mktemp())

    def listing(self):
        return {sub: sorted(os.listdir(os.path.join(self.mailbox, sub))) for sub in ("new", "cur")}

    def test_delete_and_mark_seen(self):
        """
        Deleted files go; retrieved ones move to cur/ with S added to their
        flags in ASCII order; others stay as they are.
        """
        put(self.mailbox, "new", "1.M1P1Q1.h", b"a\r\n")
        put(self.mailbox, "new", "2.M1P1Q1.h", b"b\r\n")
        put(self.mailbox, "cur", "3.M1P1Q1.h:2,RF", b"c\r\n")
        put(self.mailbox, "cur", "4.M1P1Q1.h:2,S", b"d\r\n")
        put(self.mailbox, "new", "5.M1P1Q1.h", b"e\r\n")
        m = scan_mailbox(self.mailbox)
        result = apply_update(self.mailbox, [m[0]], [m[1], m[2], m[3]])
        self.assertEqual((result.deleted, result.seen, result.failed), (1, 3, 0))
        self.assertEqual(
            self.listing(),
            {"new": ["5.M1P1Q1.h"], "cur": ["2.M1P1Q1.h:2,S", "3.M1P1Q1.h:2,FRS", "4.M1P1Q1.h:2,S"]},
        )

    def test_already_gone(self):
        """
        A message deleted by someone else since the snapshot counts as
        deleted; a retrieved one that vanished is skipped.
        """
        put(self.mailbox, "new", "1.M1P1Q1.h", b"a\r\n")
        put(self.mailbox, "new", "2.M1P1Q1.h", b"b\r\n")
        m = scan_mailbox(self.mailbox)
        os.unlink(m[0].path)
        os.unlink(m[1].path)
        result = apply_update(self.mailbox, [m[0]], [m[1]])
        self.assertEqual((result.deleted, result.seen, result.failed), (1, 0, 0))

    def test_follows_renames(self):
        """
        A message renamed in cur/ since the snapshot is still deleted.
        """
        put(self.mailbox, "cur", "1.M1P1Q1.h:2,", b"a\r\n")
        (message,) = scan_mailbox(self.mailbox)
        os.rename(message.path, message.path + "F")
        apply_update(self.mailbox, [message], [])
        self.assertEqual(self.listing(), {"new": [], "cur": []})

    def test_missing_cur_created(self):
        """
        Marking seen creates cur/ if another program removed it.
        """
        os.rmdir(os.path.join(self.mailbox, "cur"))
        put(self.mailbox, "new", "1.M1P1Q1.h", b"a\r\n")
        m = scan_mailbox(self.mailbox)
        self.assertEqual(apply_update(self.mailbox, [], m).seen, 1)
        self.assertEqual(self.listing(), {"new": [], "cur": ["1.M1P1Q1.h:2,S"]})

    def count_listings(self) -> list[str]:
        """
        Count the folder listings made from now on.

        @return: the list the folders listed are appended to.
        """
        listed: list[str] = []
        real = os.scandir

        def scandir(path):
            listed.append(os.path.basename(path))
            return real(path)

        self.patch(os, "scandir", scandir)
        return listed

    def test_known_paths_need_no_listing(self):
        """
        Messages where the snapshot saw them are deleted and marked seen
        without listing any folder.
        """
        for n in range(5):
            put(self.mailbox, "new", f"{n}.M1P1Q1.h", b"a\r\n")
            put(self.mailbox, "cur", f"{n + 10}.M1P1Q1.h:2,S", b"a\r\n")
        m = scan_mailbox(self.mailbox)
        listed = self.count_listings()
        result = apply_update(self.mailbox, m[:3] + m[5:8], m[3:5] + m[8:])
        self.assertEqual((result.deleted, result.seen, result.failed), (6, 4, 0))
        self.assertEqual(listed, [])
        self.assertEqual(
            self.listing(),
            {"new": [], "cur": ["13.M1P1Q1.h:2,S", "14.M1P1Q1.h:2,S", "3.M1P1Q1.h:2,S", "4.M1P1Q1.h:2,S"]},
        )

    def test_seen_by_another_reader_deleted_without_listing(self):
        """
        A message another reader moved from new/ to cur/ with the seen flag
        (as Dovecot does) is deleted under that name, without a listing.
        """
        put(self.mailbox, "new", "1.M1P1Q1.h", b"a\r\n")
        (message,) = scan_mailbox(self.mailbox)
        os.rename(message.path, os.path.join(self.mailbox, "cur", "1.M1P1Q1.h:2,S"))
        listed = self.count_listings()
        self.assertEqual(apply_update(self.mailbox, [message], []).deleted, 1)
        self.assertEqual(listed, [])
        self.assertEqual(self.listing(), {"new": [], "cur": []})

    def test_renamed_messages_listed_once(self):
        """
        Many messages renamed by another reader since the snapshot (flags
        changed, or gone) cost one listing of cur/ and new/ in all, not one
        per message; each is still deleted or marked seen.
        """
        for n in range(6):
            put(self.mailbox, "cur", f"{n}.M1P1Q1.h:2,", b"a\r\n")
        m = scan_mailbox(self.mailbox)
        for message in m[:5]:
            os.rename(message.path, message.path + "F")
        os.unlink(m[5].path)
        listed = self.count_listings()
        result = apply_update(self.mailbox, m[:3] + [m[5]], m[3:5])
        self.assertEqual((result.deleted, result.seen, result.failed), (4, 2, 0))
        self.assertEqual(sorted(listed), ["cur", "new"])
        self.assertEqual(self.listing(), {"new": [], "cur": ["3.M1P1Q1.h:2,FS", "4.M1P1Q1.h:2,FS"]})

    def test_unremovable_counts_failed(self):
        """
        A message that cannot be removed (here: a folder in its place)
        counts as failed; the others are still removed.
        """
        put(self.mailbox, "new", "1.M1P1Q1.h", b"a\r\n")
        put(self.mailbox, "new", "2.M1P1Q1.h", b"b\r\n")
        m = scan_mailbox(self.mailbox)
        os.unlink(m[0].path)
        os.mkdir(m[0].path)
        result = apply_update(self.mailbox, m, [])
        self.assertEqual((result.deleted, result.seen, result.failed), (1, 0, 1))
        self.assertEqual(self.listing(), {"new": ["1.M1P1Q1.h"], "cur": []})
