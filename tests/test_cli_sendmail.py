"""
Tests for L{mailappliance.cli.sendmail} and the drop folder format
(L{mailappliance.queue.incoming}).
"""

import io
import os
import re
from types import SimpleNamespace

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import parse_mailbox
from mailappliance.cli import sendmail
from mailappliance.cli.main import CommandError, main
from mailappliance.cli.sendmail import (
    MAX_FULL_NAME,
    complete_message,
    from_field,
    parse_arguments,
    read_message,
    recipients_from_headers,
)
from mailappliance.queue.ids import is_queue_id
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
        self.assertEqual((o.sender, o.dot_ends, o.recipients, o.full_name),
                         ("me@x.test", False, ["-odd@x.test"], "Cron Daemon"))
        self.assertEqual(parse_arguments(["-FCronDaemon"]).full_name, "CronDaemon")
        self.assertTrue(parse_arguments([]).dot_ends)

    def test_usage_errors(self):
        for bad in (["-f"], ["-Z"], ["-bp"], ["-q"], ["-c"], ["-C"], ["--config"], ["--config="]):
            with self.assertRaises(CommandError) as cm:
                parse_arguments(bad)
            self.assertEqual(cm.exception.status, 64)

    def test_config_options(self):
        """
        C{--config FILE}, C{-c FILE} and sendmail's C{-C FILE}, also
        attached, name the configuration file; the last one given wins,
        and none is taken for a recipient.
        """
        for arguments in (["--config", "m.toml"], ["--config=m.toml"], ["-c", "m.toml"], ["-cm.toml"],
                          ["-C", "m.toml"], ["-Cm.toml"], ["-c", "other.toml", "-oi", "-C", "m.toml"]):
            o = parse_arguments(["-oi", *arguments, "-t", "a@example.test"])
            self.assertEqual((o.config, o.recipients, o.from_headers, o.dot_ends),
                             ("m.toml", ["a@example.test"], True, False), arguments)
        self.assertIsNone(parse_arguments(["-oi", "a@example.test"]).config)

    def test_config_option_is_an_option_like_the_others(self):
        """
        As the value of C{-f} or C{-F}, or after C{--}, C{-c} is not the
        configuration option.
        """
        o = parse_arguments(["-f", "-c", "-F", "-C", "--", "-c", "x.toml"])
        self.assertEqual((o.config, o.sender, o.recipients), (None, "-c", ["-c", "x.toml"]))


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


class HeaderCompletionTests(SynchronousTestCase):
    """
    L{complete_message} and L{from_field}.
    """

    FIELDS = (b"From: Cron Daemon <root@example.test>\r\nMessage-ID: <1M8KFEBFK00MEFWJ@mail.example.test>\r\n"
              b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n")

    def complete(self, message, sender="root@example.test", full_name="Cron Daemon"):
        return complete_message(message, parse_mailbox(sender) if sender else None, full_name, "example.test",
                                "mail.example.test", 1700000000.0, "1M8KFEBFK00MEFWJ")

    def test_missing_fields_added(self):
        """
        The missing fields go at the end of the header section.
        """
        self.assertEqual(self.complete(b"Subject: t\r\n\r\nbody\r\n"),
                         b"Subject: t\r\n" + self.FIELDS + b"\r\nbody\r\n")
        self.assertEqual(self.complete(b"Subject: only a header\r\n"),
                         b"Subject: only a header\r\n" + self.FIELDS)

    def test_no_header_section(self):
        """
        Input that does not start with a header section gets the fields
        and an empty line before it, so that it stays the body.
        """
        self.assertEqual(self.complete(b"no header line here just text\r\nsecond: line\r\n"),
                         self.FIELDS + b"\r\nno header line here just text\r\nsecond: line\r\n")
        self.assertEqual(self.complete(b"\r\nbody after an empty line\r\n"),
                         self.FIELDS + b"\r\nbody after an empty line\r\n")
        self.assertEqual(self.complete(b""), self.FIELDS)

    def test_present_fields_kept(self):
        """
        Fields the message has (in any case) are neither added nor
        changed; C{Resent-From:} is not C{From:}.
        """
        message = b"FROM: a@x.test\r\nmessage-id: <m@x.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n"
        self.assertEqual(self.complete(message), message)
        self.assertEqual(self.complete(b"Resent-From: a@x.test\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n"),
                         b"Resent-From: a@x.test\r\nDate: d\r\nMessage-ID: <m@x>\r\n"
                         b"From: Cron Daemon <root@example.test>\r\n\r\nb\r\n")

    def test_from_field(self):
        """
        The envelope sender, with the -F name quoted or encoded, control
        characters made spaces (no field can be injected), and
        C{MAILER-DAEMON} for the null sender.
        """
        root = parse_mailbox("root@example.test")
        self.assertEqual(from_field(root, "", "example.test"), b"From: root@example.test\r\n")
        self.assertEqual(from_field(None, "", "example.test"), b"From: MAILER-DAEMON@example.test\r\n")
        self.assertEqual(from_field(root, 'Cron "the" Daemon', "example.test"),
                         b'From: "Cron \\"the\\" Daemon" <root@example.test>\r\n')
        self.assertEqual(from_field(root, "x\r\nBcc: victim@x.test", "example.test"),
                         b"From: \"x Bcc: victim@x.test\" <root@example.test>\r\n")
        self.assertEqual(from_field(root, "J\u00fcrgen", "example.test"),
                         b"From: =?utf-8?q?J=C3=BCrgen?= <root@example.test>\r\n")
        self.assertEqual(from_field(parse_mailbox("j\u00fc@example.test"), "J", "example.test"),
                         'From: "J" <j\u00fc@example.test>\r\n'.encode())
        self.assertEqual(len(from_field(root, "n" * 5000, "example.test")),
                         MAX_FULL_NAME + len(b"From:  <root@example.test>\r\n"))


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
                     b'{"version": 1, "sender": "", "recipients": ["bad"]}\r\nx',
                     # No recipient: moved to corrupt/, not retried for ever.
                     b'{"version": 1, "sender": "", "recipients": []}\r\nx'):
            self.assertRaises(DropFormatError, parse_drop, data)


class CommandTests(SynchronousTestCase):
    def setUp(self):
        self.base = FilePath(self.mktemp())
        self.base.makedirs()
        self.config = self.base.child("m.toml")
        self.config.setContent(b'[server]\nhostname = "mail.example.test"\nlocal_domains = ["example.test"]\n')

    def run_cli(self, argv, stdin=b"", environ=None):
        out, err = io.StringIO(), io.StringIO()
        source = io.TextIOWrapper(io.BytesIO(stdin))
        status = main(argv, stdin=source, stdout=out, stderr=err, environ=environ or {})
        return status, out.getvalue(), err.getvalue()

    def make_incoming(self):
        incoming = self.base.child("var").child("queue").child("incoming")
        incoming.makedirs()
        return incoming

    def only_drop(self, incoming):
        [name] = list_drops(incoming.path)
        return parse_drop(incoming.child(name).getContent())

    def test_drop_written(self):
        """
        The message lands in the drop folder, its header completed, with
        the invoking user at the first local domain as sender; --config
        may follow the subcommand.
        """
        self.patch(sendmail, "_user", lambda: "cronuser")
        incoming = self.make_incoming()
        status, out, err = self.run_cli(["sendmail", "--config", self.config.path, "-oi", "alice@example.test"],
                                        b"From: me@example.test\nDate: whenever\nMessage-ID: <1@x>\n"
                                        b"Subject: cron\n\nall good\n")
        self.assertEqual((status, err), (0, ""))
        drop = self.only_drop(incoming)
        self.assertEqual(drop.message, b"From: me@example.test\r\nDate: whenever\r\nMessage-ID: <1@x>\r\n"
                                       b"Subject: cron\r\n\r\nall good\r\n")
        self.assertEqual(str(drop.sender), "cronuser@example.test")

    def test_header_completed(self):
        """
        C{echo text | sendmail root}: the message gets C{From:} (the
        envelope sender, with the C{-F} name), C{Message-ID:} (a fresh
        queue id at the host name) and C{Date:}, and the empty line that
        keeps the text in the body.
        """
        self.patch(sendmail, "_user", lambda: "root")
        self.patch(sendmail, "time", SimpleNamespace(time=lambda: 1700000000.0))
        incoming = self.make_incoming()
        status, out, err = self.run_cli(["-c", self.config.path, "sendmail", "-F", "Cron Daemon", "root"],
                                        b"disk full\n")
        self.assertEqual((status, err), (0, ""))
        message = self.only_drop(incoming).message
        match = re.fullmatch(rb"From: Cron Daemon <root@example\.test>\r\n"
                             rb"Message-ID: <([0-9A-Z]{16})@mail\.example\.test>\r\n"
                             rb"Date: Tue, 14 Nov 2023 22:13:20 \+0000\r\n"
                             rb"\r\n"
                             rb"disk full\r\n", message)
        self.assertIsNotNone(match, message)
        self.assertTrue(is_queue_id(match.group(1).decode()))

    def test_short_config_option_after_subcommand(self):
        """
        C{-c FILE} (and C{-cFILE}, C{-C FILE}) after the subcommand name the
        configuration, among sendmail's own options, as for every other
        subcommand.
        """
        incoming = self.make_incoming()
        for config in (["-c", self.config.path], ["-c" + self.config.path], ["-C", self.config.path]):
            status, out, err = self.run_cli(["sendmail", "-FCronDaemon", "-i", *config, "-B8BITMIME", "-oem",
                                             "alice@example.test"], b"Subject: cron\n\nout\n")
            self.assertEqual((status, err), (0, ""), config)
        self.assertEqual(len(list_drops(incoming.path)), 3)

    def test_config_from_environment(self):
        """
        Without --config, the file named by MAILAPPLIANCE_CONFIG is used
        (whatever the current folder); --config still wins over it.
        """
        incoming = self.make_incoming()
        status, out, err = self.run_cli(["sendmail", "-oi", "alice@example.test"], b"x\n",
                                        environ={"MAILAPPLIANCE_CONFIG": self.config.path})
        self.assertEqual((status, err), (0, ""))
        missing = self.base.child("nonexistent.toml").path
        status, out, err = self.run_cli(["sendmail", "-c", self.config.path, "alice@example.test"], b"x\n",
                                        environ={"MAILAPPLIANCE_CONFIG": missing})
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(list_drops(incoming.path)), 2)
        status, out, err = self.run_cli(["sendmail", "alice@example.test"], b"x\n",
                                        environ={"MAILAPPLIANCE_CONFIG": missing})
        self.assertEqual((status, err),
                         (1, f"mailappliance: {missing}: cannot read configuration: No such file or directory\n"))

    def test_bare_names_qualified(self):
        """
        A bare recipient name (as cron passes C{root}), also from C{To:}
        with C{-t}, and a bare C{-f} sender get the first local domain.
        """
        incoming = self.make_incoming()
        status, out, err = self.run_cli(["-c", self.config.path, "sendmail", "-f", "cron", "-t", "root"],
                                        b"To: <admin>, bob@elsewhere.test\nSubject: t\n\nb\n")
        self.assertEqual((status, err), (0, ""))
        drop = self.only_drop(incoming)
        self.assertEqual(str(drop.sender), "cron@example.test")
        self.assertEqual([str(r) for r in drop.recipients],
                         ["root@example.test", "admin@example.test", "bob@elsewhere.test"])

    def test_no_local_domains(self):
        """
        With no local domain, bare names and the default sender get the
        postmaster's domain.
        """
        self.patch(sendmail, "_user", lambda: "cronuser")
        self.config.setContent(b'[server]\nhostname = "mail.example.test"\nlocal_domains = []\n'
                               b'postmaster = "pm@corp.test"\n')
        incoming = self.make_incoming()
        status, out, err = self.run_cli(["-c", self.config.path, "sendmail", "root"], b"x\n")
        self.assertEqual((status, err), (0, ""))
        drop = self.only_drop(incoming)
        self.assertEqual((str(drop.sender), [str(r) for r in drop.recipients]),
                         ("cronuser@corp.test", ["root@corp.test"]))

    def test_no_queue_folder(self):
        status, out, err = self.run_cli(["-c", self.config.path, "sendmail", "a@example.test"], b"x\n")
        self.assertEqual(status, 73)
        self.assertEqual(err.count("\n"), 1)

    def test_no_recipients(self):
        status, out, err = self.run_cli(["-c", self.config.path, "sendmail"], b"x\n")
        self.assertEqual(status, 64)

    def test_bad_recipient(self):
        """
        What is not an address is refused, bare or not.
        """
        for bad in ("not an address", "root@", "@example.test", "a@b@example.test", ""):
            status, out, err = self.run_cli(["-c", self.config.path, "sendmail", bad], b"x\n")
            self.assertEqual(status, 67, bad)
            self.assertEqual(err.count("\n"), 1)

    def test_bad_sender(self):
        status, out, err = self.run_cli(["-c", self.config.path, "sendmail", "-f", "no body", "root"], b"x\n")
        self.assertEqual(status, 65)
