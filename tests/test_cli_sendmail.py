"""
Tests for L{mailappliance.cli.sendmail} and the drop folder format
(L{mailappliance.queue.incoming}).
"""

import io
import os

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import parse_mailbox
from mailappliance.cli.main import CommandError, main
from mailappliance.cli.sendmail import parse_arguments, read_message, recipients_from_headers
from mailappliance.queue.incoming import (
    STALE_TEMPORARY_AGE,
    DropFormatError,
    list_drops,
    parse_drop,
    scan_drops,
    write_drop,
)


class ArgumentTests(SynchronousTestCase):
    def test_common_forms(self):
        o = parse_arguments(["-oi", "-t", "-f", "cron@example.test", "a@example.test"])
        self.assertEqual((o.sender, o.from_headers, o.dot_ends, o.recipients),
                         ("cron@example.test", True, False, ["a@example.test"]))
        o = parse_arguments(["-fme@x.test", "-i", "-F", "Cron Daemon", "-odi", "--", "-odd@x.test"])
        self.assertEqual((o.sender, o.dot_ends, o.recipients), ("me@x.test", False, ["-odd@x.test"]))
        self.assertTrue(parse_arguments([]).dot_ends)

    def test_usage_errors(self):
        for bad in (["-f"], ["-Z"], ["-bp"], ["-q"]):
            with self.assertRaises(CommandError) as cm:
                parse_arguments(bad)
            self.assertEqual(cm.exception.status, 64)


class MessageTests(SynchronousTestCase):
    def test_line_ends(self):
        """
        LF, CR and CRLF all become CRLF; a final newline is added.
        """
        self.assertEqual(read_message(io.BytesIO(b"a\nb\rc\r\nd"), False, 1000), b"a\r\nb\r\nc\r\nd\r\n")

    def test_dot_ends_input(self):
        """
        Without -i a lone dot ends the message; with -i it is content.
        """
        self.assertEqual(read_message(io.BytesIO(b"a\n.\nb\n"), True, 1000), b"a\r\n")
        self.assertEqual(read_message(io.BytesIO(b"a\n.\nb\n"), False, 1000), b"a\r\n.\r\nb\r\n")

    def test_too_large(self):
        with self.assertRaises(CommandError) as cm:
            read_message(io.BytesIO(b"x" * 2000), False, 1000)
        self.assertEqual(cm.exception.status, 65)

    def test_recipients_from_headers(self):
        """
        -t takes To, Cc and Bcc (folded, with names) and removes Bcc.
        """
        message = (b"From: me@x.test\r\nTo: A <a@x.test>,\r\n b@x.test\r\nCc: c@x.test\r\n"
                   b"Bcc: secret@x.test,\r\n\tother@x.test\r\nSubject: s\r\n\r\nTo: not@header.test\r\n")
        found, rest = recipients_from_headers(message)
        self.assertEqual(found, ["a@x.test", "b@x.test", "c@x.test", "secret@x.test", "other@x.test"])
        self.assertEqual(rest, b"From: me@x.test\r\nTo: A <a@x.test>,\r\n b@x.test\r\nCc: c@x.test\r\n"
                               b"Subject: s\r\n\r\nTo: not@header.test\r\n")


class DropTests(SynchronousTestCase):
    def test_round_trip(self):
        """
        A drop is written under its final name only when complete, and
        reads back.
        """
        folder = FilePath(self.mktemp())
        folder.makedirs()
        path = write_drop(folder.path, None, [parse_mailbox("a@x.test")], b"Subject: x\r\n\r\nbody\r\n",
                          user="root", uid=0, now=1700000000.0)
        self.assertEqual(list_drops(folder.path), [os.path.basename(path)])
        self.assertEqual(os.listdir(folder.path), [os.path.basename(path)])
        drop = parse_drop(FilePath(path).getContent())
        self.assertEqual((drop.sender, [str(r) for r in drop.recipients], drop.message),
                         (None, ["a@x.test"], b"Subject: x\r\n\r\nbody\r\n"))

    def test_stale_temporary_files_removed(self):
        """
        L{scan_drops} removes a drop's hidden temporary file untouched for
        over an hour (a sendmail that died while writing it) and lists the
        complete drops; a younger temporary file (a sendmail writing now)
        and other files are left alone.
        """
        folder = FilePath(self.mktemp())
        folder.makedirs()
        now = 1700000000.0
        path = write_drop(folder.path, None, [parse_mailbox("a@x.test")], b"\r\n", user="root", uid=0, now=now)
        for name, age in ((".1-a.msg.tmp", STALE_TEMPORARY_AGE + 1), (".2-b.msg.tmp", STALE_TEMPORARY_AGE - 60),
                          (".other.tmp", 10 * STALE_TEMPORARY_AGE)):
            folder.child(name).setContent(b"partial")
            os.utime(folder.child(name).path, (now - age, now - age))
        names, removed = scan_drops(folder.path, now)
        self.assertEqual((names, removed), ([os.path.basename(path)], [folder.child(".1-a.msg.tmp").path]))
        self.assertEqual(sorted(os.listdir(folder.path)), [".2-b.msg.tmp", ".other.tmp", os.path.basename(path)])

    def test_bad_drops(self):
        for data in (b"", b"no header", b'{"version": 2}\r\n', b'{"version": 1}\r\n',
                     b'{"version": 1, "sender": "", "recipients": ["bad"]}\r\nx'):
            self.assertRaises(DropFormatError, parse_drop, data)


class CommandTests(SynchronousTestCase):
    def setUp(self):
        self.base = FilePath(self.mktemp())
        self.base.makedirs()
        self.config = self.base.child("m.toml")
        self.config.setContent(b'[server]\nhostname = "mail.example.test"\nlocal_domains = ["example.test"]\n')

    def run_cli(self, argv, stdin=b""):
        out, err = io.StringIO(), io.StringIO()
        source = io.TextIOWrapper(io.BytesIO(stdin))
        return main(argv, stdin=source, stdout=out, stderr=err), out.getvalue(), err.getvalue()

    def test_drop_written(self):
        """
        The message lands in the drop folder with the invoking user as
        sender; --config may follow the subcommand.
        """
        incoming = self.base.child("var").child("queue").child("incoming")
        incoming.makedirs()
        status, out, err = self.run_cli(["sendmail", "--config", self.config.path, "-oi", "alice@example.test"],
                                        b"Subject: cron\n\nall good\n")
        self.assertEqual((status, err), (0, ""))
        [name] = list_drops(incoming.path)
        drop = parse_drop(incoming.child(name).getContent())
        self.assertEqual(drop.message, b"Subject: cron\r\n\r\nall good\r\n")
        self.assertTrue(str(drop.sender).endswith("@mail.example.test"))

    def test_no_queue_folder(self):
        status, out, err = self.run_cli(["-c", self.config.path, "sendmail", "a@example.test"], b"x\n")
        self.assertEqual(status, 73)
        self.assertEqual(err.count("\n"), 1)

    def test_no_recipients(self):
        status, out, err = self.run_cli(["-c", self.config.path, "sendmail"], b"x\n")
        self.assertEqual(status, 64)

    def test_bad_recipient(self):
        status, out, err = self.run_cli(["-c", self.config.path, "sendmail", "not an address"], b"x\n")
        self.assertEqual(status, 67)
