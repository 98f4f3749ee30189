# -*- test-case-name: tests.test_resolve_aliases -*-
"""
Tests for L{mailappliance.resolve.aliases}: the reloading table and the
C{"aliases"} resolver.
"""

import os

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailappliance.address import Mailbox, parse_mailbox
from mailappliance.interfaces import Forward, IAddressResolver
from mailappliance.resolve.aliases import AliasesFileError, AliasesResolver, AliasesTable

LOCAL = ("example.test", "other.test")


class RecordingDisk:
    """
    A disk pool that runs work at once and records the names of the
    functions it was given, to show that file work goes through the pool.
    """

    def __init__(self):
        self.calls = []

    def run(self, function, *args, **kwargs):
        self.calls.append(function.__name__)
        return maybeDeferred(function, *args, **kwargs)


class ManualDisk:
    """
    A disk pool whose work runs only when the test says so.
    """

    def __init__(self):
        self.pending = []

    def run(self, function, *args, **kwargs):
        d = Deferred()
        self.pending.append((function, args, kwargs, d))
        return d

    def run_next(self):
        function, args, kwargs, d = self.pending.pop(0)
        maybeDeferred(function, *args, **kwargs).chainDeferred(d)


def mailbox(text):
    return parse_mailbox(text)


class TableTestsMixin:
    def make_table(self, content=None, disk=None):
        """
        @param content: the file's bytes, or L{None} for no file.
        @return: a table on a file in a fresh folder, with its events in
            C{self.events} and its pool in C{self.disk}.
        """
        self.path = os.path.join(self.mktemp(), "aliases")
        os.makedirs(os.path.dirname(self.path))
        if content is not None:
            self.write(content)
        self.events = []
        self.disk = disk if disk is not None else RecordingDisk()
        return AliasesTable(self.path, LOCAL, self.disk, Logger(observer=self.events.append))

    def write(self, content, replace=True):
        """
        Write a new version of the file: a new file renamed into place (as
        editors do), or rewritten in place.
        """
        if replace:
            tmp = self.path + ".new"
            with open(tmp, "wb") as f:
                f.write(content)
            os.replace(tmp, self.path)
        else:
            with open(self.path, "wb") as f:
                f.write(content)

    def messages(self):
        return [formatEvent(event) for event in self.events]

    def reloaded(self, d):
        return self.successResultOf(d)


class LoadTests(TableTestsMixin, SynchronousTestCase):
    def test_load(self):
        """
        L{AliasesTable.load} reads the file; lookups answer its targets.
        """
        table = self.make_table(b"team@example.test: a@example.test, b@remote.test\n")
        table.load()
        self.assertEqual(
            table.lookup(mailbox("Team@Example.Test")),
            (Mailbox("a", "example.test"), Mailbox("b", "remote.test")),
        )
        self.assertEqual(len(table), 1)
        self.assertEqual(self.messages(), [f"aliases file={self.path} status=loaded aliases=1"])

    def test_missing_file(self):
        """
        A missing file is an empty table, not an error.
        """
        table = self.make_table(None)
        table.load()
        self.assertEqual(len(table), 0)
        self.assertIsNone(table.lookup(mailbox("a@example.test")))

    def test_no_path(self):
        """
        A table without a file is empty and its reloads change nothing.
        """
        table = AliasesTable(None, LOCAL, RecordingDisk())
        table.load()
        self.assertEqual(len(table), 0)
        self.assertIs(self.successResultOf(table.reload_if_changed()), False)
        self.assertIs(self.successResultOf(table.reload()), False)

    def test_load_error(self):
        """
        A mistake raises L{AliasesFileError} with file and line, and the
        table stays as it was.
        """
        table = self.make_table(b"a@example.test: b@example.test\n")
        table.load()
        self.write(b"a@example.test: b@example.test\nc@example.test: |cmd\n")
        error = self.assertRaises(AliasesFileError, table.load)
        self.assertEqual(str(error), f"{self.path}:2: delivery to a command is not supported: '|cmd'")
        self.assertEqual(table.lookup(mailbox("a@example.test")), (Mailbox("b", "example.test"),))

    def test_unreadable(self):
        """
        A file that exists but cannot be read (here: a folder) is an error
        without a line number.
        """
        table = self.make_table(None)
        os.mkdir(self.path)
        error = self.assertRaises(AliasesFileError, table.load)
        self.assertEqual(str(error), f"{self.path}: cannot read the aliases file: Is a directory")

    def test_unused_names_logged(self):
        """
        Names outside the local domains can never match: each is logged as a
        warning with its line, and the file still loads.
        """
        table = self.make_table(
            b"a@example.test: b@example.test\n"
            b"x@elsewhere.test: b@example.test\n"
            b"@far.test: b@example.test\n"
        )
        table.load()
        self.assertEqual(
            self.messages(),
            [
                f"aliases file={self.path} status=loaded aliases=3",
                f"aliases file={self.path} line=2 status=unused "
                'reason="x@elsewhere.test is not in a local domain"',
                f'aliases file={self.path} line=3 status=unused reason="@far.test is not in a local domain"',
            ],
        )
        self.assertEqual(len(table), 3)


class LookupTests(TableTestsMixin, SynchronousTestCase):
    def setUp(self):
        self.table = self.make_table(
            b"abuse@example.test: exact@example.test\n"
            b"abuse: bare@example.test\n"
            b"@example.test: catch@example.test\n"
        )
        self.table.load()

    def test_exact_before_bare(self):
        """
        A full-address name wins over a bare local part.
        """
        self.assertEqual(self.table.lookup(mailbox("ABUSE@example.test")), (Mailbox("exact", "example.test"),))

    def test_bare_local_part(self):
        """
        A bare local part applies to every local domain, case-insensitively.
        """
        self.assertEqual(self.table.lookup(mailbox("Abuse@other.test")), (Mailbox("bare", "example.test"),))

    def test_bare_local_part_not_remote(self):
        """
        A bare local part does not apply outside the local domains.
        """
        self.assertIsNone(self.table.lookup(mailbox("abuse@remote.test")))

    def test_catch_all_separate(self):
        """
        The catch-all is not part of L{AliasesTable.lookup}: the chain asks
        for it last, with L{AliasesTable.lookup_catch_all}.
        """
        self.assertIsNone(self.table.lookup(mailbox("nobody@example.test")))
        self.assertEqual(self.table.lookup_catch_all("example.test"), (Mailbox("catch", "example.test"),))
        self.assertIsNone(self.table.lookup_catch_all("other.test"))


class ResolverTests(TableTestsMixin, SynchronousTestCase):
    def setUp(self):
        self.table = self.make_table(
            b"team@example.test: a@example.test, b@remote.test\n"
            b"abuse: a@example.test\n"
            b"@other.test: c@example.test\n"
        )
        self.table.load()
        self.resolver = AliasesResolver(self.table)

    def test_interface(self):
        """
        L{AliasesResolver} provides L{IAddressResolver}, named C{"aliases"},
        and offers its table for reloading.
        """
        self.assertTrue(verifyObject(IAddressResolver, self.resolver))
        self.assertEqual(self.resolver.name, "aliases")
        self.assertEqual(self.resolver.reloadables, (self.table,))

    def test_resolve(self):
        """
        An alias resolves to a L{Forward} of its targets.
        """
        self.assertEqual(
            self.successResultOf(self.resolver.resolve(mailbox("TEAM@example.test"))),
            Forward((Mailbox("a", "example.test"), Mailbox("b", "remote.test"))),
        )
        self.assertEqual(
            self.successResultOf(self.resolver.resolve(mailbox("abuse@other.test"))),
            Forward((Mailbox("a", "example.test"),)),
        )

    def test_unknown(self):
        """
        An address without an alias resolves to L{None}; so does one that
        only the catch-all would match.
        """
        self.assertIsNone(self.successResultOf(self.resolver.resolve(mailbox("x@example.test"))))
        self.assertIsNone(self.successResultOf(self.resolver.resolve(mailbox("x@other.test"))))

    def test_catch_all(self):
        """
        L{AliasesResolver.resolve_catch_all} answers the C{@domain} alias.
        """
        self.assertEqual(
            self.successResultOf(self.resolver.resolve_catch_all("other.test")),
            Forward((Mailbox("c", "example.test"),)),
        )
        self.assertIsNone(self.successResultOf(self.resolver.resolve_catch_all("example.test")))

    def test_follows_reload(self):
        """
        The resolver answers from the version of the table in force.
        """
        self.write(b"team@example.test: z@example.test\n")
        self.assertIs(self.successResultOf(self.table.reload()), True)
        self.assertEqual(
            self.successResultOf(self.resolver.resolve(mailbox("team@example.test"))),
            Forward((Mailbox("z", "example.test"),)),
        )


class ReloadTests(TableTestsMixin, SynchronousTestCase):
    def setUp(self):
        self.table = self.make_table(b"a@example.test: one@example.test\n")
        self.table.load()
        del self.events[:]

    def current(self):
        return self.table.lookup(mailbox("a@example.test"))

    def test_unchanged(self):
        """
        When the file has not changed, only a stat is made, in the disk
        pool, and the answer is L{False}.
        """
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), False)
        self.assertEqual(self.disk.calls, ["stat_signature"])

    def test_replaced(self):
        """
        A file replaced by a new one (new inode) is read again, in the disk
        pool; the answer is L{True} and the new version is in force.
        """
        self.write(b"a@example.test: two@example.test\n")
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), True)
        self.assertEqual(self.disk.calls, ["stat_signature", "_read_and_parse"])
        self.assertEqual(self.current(), (Mailbox("two", "example.test"),))
        self.assertEqual(self.messages(), [f"aliases file={self.path} status=loaded aliases=1"])
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), False)

    def test_rewritten_in_place(self):
        """
        A file rewritten in place with the same size is noticed by its
        modification time.
        """
        status = os.stat(self.path)
        self.write(b"a@example.test: two@example.test\n", replace=False)
        os.utime(self.path, ns=(status.st_atime_ns, status.st_mtime_ns + 1))
        self.assertEqual(os.stat(self.path).st_ino, status.st_ino)
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), True)
        self.assertEqual(self.current(), (Mailbox("two", "example.test"),))

    def test_bad_edit_keeps_last_good(self):
        """
        A version with a mistake is refused: the last good version stays in
        force, the mistake is logged once with file and line (not again at
        the next poll), and the next good version is taken.
        """
        self.write(b"a@example.test: two@example.test\n\nb@example.test: /dev/null\n")
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), False)
        self.assertEqual(self.current(), (Mailbox("one", "example.test"),))
        self.assertEqual(
            self.messages(),
            [
                f"aliases file={self.path} line=3 status=refused "
                "reason=\"delivery to a file is not supported: '/dev/null'\" "
                "(the previous version stays in force)"
            ],
        )
        self.assertEqual(self.events[0]["log_level"].name, "error")
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), False)
        self.assertEqual(len(self.events), 1)
        self.write(b"a@example.test: three@example.test\n")
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), True)
        self.assertEqual(self.current(), (Mailbox("three", "example.test"),))

    def test_deleted(self):
        """
        A file that goes missing while the server runs is refused, logged
        once, and the last version stays in force.
        """
        os.unlink(self.path)
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), False)
        self.assertEqual(self.current(), (Mailbox("one", "example.test"),))
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), False)
        self.assertEqual(self.messages()[-1:], [
            f'aliases file={self.path} status=missing reason="no such file" (the previous version stays in force)'])
        self.assertEqual(len([m for m in self.messages() if "status=missing" in m]), 1)

    def test_reload_unconditional(self):
        """
        L{AliasesTable.reload} (SIGHUP) reads the file even when its
        signature has not changed.
        """
        self.assertIs(self.successResultOf(self.table.reload()), True)
        self.assertEqual(self.disk.calls, ["_read_and_parse"])

    def test_reload_refused(self):
        """
        L{AliasesTable.reload} of a bad version answers L{False} and keeps
        the last good version.
        """
        self.write(b"a@example.test b@example.test\n")
        self.assertIs(self.successResultOf(self.table.reload()), False)
        self.assertEqual(self.current(), (Mailbox("one", "example.test"),))
        self.assertEqual(
            self.messages(),
            [
                f"aliases file={self.path} line=1 status=refused "
                "reason=\"missing ':' after the alias name\" (the previous version stays in force)"
            ],
        )

    def test_unreadable(self):
        """
        A file that becomes unreadable is logged (without a line) and the
        last good version stays in force.
        """
        os.unlink(self.path)
        os.mkdir(self.path)
        self.assertIs(self.successResultOf(self.table.reload_if_changed()), False)
        self.assertEqual(self.current(), (Mailbox("one", "example.test"),))
        self.assertEqual(
            self.messages(),
            [
                f"aliases file={self.path} line=- status=refused "
                'reason="cannot read the aliases file: Is a directory" (the previous version stays in force)'
            ],
        )

    def test_stat_fails(self):
        """
        A path that cannot even be stat'ed is logged once, until it can.
        """
        log = Logger(observer=self.events.append)
        table = AliasesTable(os.path.join(self.path, "aliases"), LOCAL, self.disk, log)
        self.assertIs(self.successResultOf(table.reload_if_changed()), False)
        self.assertIs(self.successResultOf(table.reload_if_changed()), False)
        self.assertEqual(
            self.messages(),
            [
                f"aliases file={self.path}/aliases status=unreadable reason=\"Not a directory\" "
                "(the previous version stays in force)"
            ],
        )

    def test_unexpected_failure(self):
        """
        An unexpected failure of a reload is logged with its traceback and
        answered L{False}: reloads run from timers and signal handlers,
        where a failed L{Deferred} would go unnoticed.
        """

        class FailingDisk:
            def run(self, function, *args):
                return fail(MemoryError("no room"))

        table = self.make_table(b"a@example.test: one@example.test\n", disk=FailingDisk())
        self.assertIs(self.successResultOf(table.reload_if_changed()), False)
        self.assertIs(self.successResultOf(table.reload()), False)
        self.assertEqual(self.messages(), [f"aliases file={self.path} status=error"] * 2)
        self.assertIsInstance(self.events[0]["log_failure"].value, MemoryError)

    def test_serialised(self):
        """
        Reloads do not overlap: a second one waits for the first to finish
        before it touches the disk, so versions are installed in order.
        """
        disk = ManualDisk()
        table = self.make_table(b"a@example.test: one@example.test\n", disk=disk)
        first = table.reload()
        second = table.reload_if_changed()
        self.assertEqual(len(disk.pending), 1)
        self.write(b"a@example.test: two@example.test\n")
        disk.run_next()
        self.assertIs(self.successResultOf(first), True)
        self.assertEqual(table.lookup(mailbox("a@example.test")), (Mailbox("two", "example.test"),))
        self.assertEqual(len(disk.pending), 1)
        disk.run_next()
        self.assertIs(self.successResultOf(second), False)
        self.assertEqual(disk.pending, [])
