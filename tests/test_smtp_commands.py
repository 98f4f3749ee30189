"""
Tests for L{mailappliance.smtp.commands}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import Mailbox
from mailappliance.smtp.commands import (
    BadChunkCommand,
    ChunkCommand,
    Command,
    CommandRefused,
    MailFrom,
    is_http_request,
    names_postmaster,
    parse_bdat,
    parse_command,
    parse_mail,
    parse_rcpt,
)

MX_POSTMASTER = Mailbox("postmaster", "mx.test")


class ParseCommandTests(SynchronousTestCase):
    def test_split(self) -> None:
        """
        The verb is upper-cased; the argument keeps its case and loses
        trailing blanks.
        """
        self.assertEqual(parse_command(b"mail FROM:<A@b> "), Command("MAIL", b"FROM:<A@b>"))
        self.assertEqual(parse_command(b"QUIT"), Command("QUIT", b""))

    def test_bad_verbs(self) -> None:
        """
        An empty line, a verb with non-letters or a leading space is 500.
        """
        for line in (b"", b" NOOP", b"NO0P", b"\xffEHLO x", b"A" * 17):
            with self.assertRaises(CommandRefused) as cm:
                parse_command(line)
            self.assertEqual(cm.exception.reply.code, 500, line)

    def test_http(self) -> None:
        """
        HTTP request lines are recognised; SMTP commands are not.
        """
        self.assertTrue(is_http_request(b"GET / HTTP/1.1"))
        self.assertTrue(is_http_request(b"POST /x HTTP/1.0"))
        self.assertTrue(is_http_request(b"CONNECT a:25 HTTP/1.1"))
        self.assertFalse(is_http_request(b"GETX"))
        self.assertFalse(is_http_request(b"EHLO GET "))


def refusal(function, *args) -> tuple[int, str]:
    try:
        function(*args)
    except CommandRefused as e:
        return e.reply.code, e.reply.status
    raise AssertionError("not refused")


class ParseMailTests(SynchronousTestCase):
    def test_plain(self) -> None:
        """
        C{FROM:<path>} in any case, with optional spaces after the colon.
        """
        expected = MailFrom(Mailbox("a", "b.test"))
        self.assertEqual(parse_mail(b"FROM:<a@b.test>", True), expected)
        self.assertEqual(parse_mail(b"from: <a@B.test>", True), expected)

    def test_null_sender_and_source_route(self) -> None:
        """
        C{<>} is the null sender; a source route is dropped.
        """
        self.assertEqual(parse_mail(b"FROM:<>", True), MailFrom(None))
        self.assertEqual(parse_mail(b"FROM:<@r.test,@s.test:a@b.test>", True).sender, Mailbox("a", "b.test"))

    def test_parameters(self) -> None:
        """
        SIZE, BODY and SMTPUTF8 are understood, in any case.
        """
        self.assertEqual(
            parse_mail("FROM:<ü@b.test> size=100 BODY=8bitmime SMTPUTF8".encode(), True),
            MailFrom(Mailbox("ü", "b.test"), 100, "8BITMIME", True),
        )

    def test_auth_parameter(self) -> None:
        """
        C{AUTH=} (RFC 4954 section 5) is accepted with any value, or
        none, and recorded.
        """
        self.assertEqual(parse_mail(b"FROM:<a@b.test> AUTH=<>", True).auth, "<>")
        self.assertEqual(parse_mail(b"FROM:<a@b.test> auth=a+2Bb@c.test", True).auth, "a+2Bb@c.test")
        self.assertEqual(parse_mail(b"FROM:<a@b.test> AUTH", True).auth, "")
        self.assertIsNone(parse_mail(b"FROM:<a@b.test>", True).auth)

    def test_without_brackets(self) -> None:
        """
        A path without its angle brackets is taken up to the next space,
        parameters and all (as Postfix does): small devices send it so.
        """
        self.assertEqual(parse_mail(b"FROM:a@b.test", True), MailFrom(Mailbox("a", "b.test")))
        self.assertEqual(parse_mail(b"FROM: a@b.test SIZE=10", True), MailFrom(Mailbox("a", "b.test"), size=10))
        self.assertEqual(parse_rcpt(b"TO:c@d.test", False, MX_POSTMASTER), Mailbox("c", "d.test"))
        self.assertEqual(refusal(parse_mail, b"FROM:a@@b.test", True), (501, "5.1.7"))

    def test_quoted_angle_bracket(self) -> None:
        """
        A C{>} inside a quoted local part does not end the path.
        """
        self.assertEqual(parse_mail(b'FROM:<"a>b"@c.test> SIZE=1', True).sender, Mailbox('"a>b"', "c.test"))

    def test_refusals(self) -> None:
        """
        Each kind of bad argument gets its own reply.
        """
        cases = [
            (b"", (501, "5.5.4")),
            (b"TO:<a@b.test>", (501, "5.5.4")),
            (b"FROM:", (501, "5.5.4")),
            (b"FROM:a>@b.test", (501, "5.5.4")),
            (b'FROM:"a b"@b.test', (501, "5.5.4")),
            (b"FROM:<a@b.test", (501, "5.5.4")),
            (b"FROM:<a@b.test>SIZE=1", (501, "5.5.4")),
            (b"FROM:<a@b.test> SIZE", (501, "5.5.4")),
            (b"FROM:<a@b.test> SIZE=x", (501, "5.5.4")),
            (b"FROM:<a@b.test> SIZE=" + b"9" * 21, (501, "5.5.4")),
            (b"FROM:<a@b.test> SIZE=1 size=2", (501, "5.5.4")),
            (b"FROM:<a@b.test> BODY=BINARYMIME", (504, "5.5.4")),
            (b"FROM:<a@b.test> BODY=9BIT", (501, "5.5.4")),
            (b"FROM:<a@b.test> SMTPUTF8=yes", (501, "5.5.4")),
            (b"FROM:<a@b.test> RET=FULL", (555, "5.5.4")),
            (b"FROM:<a@b.test> =x", (501, "5.5.4")),
            (b"FROM:<a@b.test> X=a=b", (501, "5.5.4")),
            (b"FROM:<a@@b.test>", (501, "5.1.7")),
            (b"FROM:<a@b.test.>", (501, "5.1.7")),
            ("FROM:<ü@b.test>".encode(), (553, "5.6.7")),
            (b"FROM:<\xff@b.test>", (553, "5.6.7")),
            (b"FROM:<\xff@b.test> SMTPUTF8", (501, "5.1.7")),
        ]
        for argument, expected in cases:
            self.assertEqual(refusal(parse_mail, argument, True), expected, argument)

    def test_parameters_need_ehlo(self) -> None:
        """
        After HELO, any parameter is refused with 555.
        """
        self.assertEqual(refusal(parse_mail, b"FROM:<a@b.test> SIZE=1", False), (555, "5.5.4"))
        self.assertEqual(parse_mail(b"FROM:<a@b.test>", False), MailFrom(Mailbox("a", "b.test")))


class ParseRcptTests(SynchronousTestCase):
    def test_plain(self) -> None:
        """
        C{TO:<path>}, case-insensitive keyword, source route dropped.
        """
        self.assertEqual(parse_rcpt(b"to:<A@B.test>", False, MX_POSTMASTER), Mailbox("A", "b.test"))
        self.assertEqual(parse_rcpt(b"TO:<@x.test:a@b.test>", False, MX_POSTMASTER), Mailbox("a", "b.test"))

    def test_postmaster(self) -> None:
        """
        C{<Postmaster>} without a domain is accepted (RFC 5321 section
        4.5.1) as the configured postmaster; L{names_postmaster} tells it.
        """
        postmaster = Mailbox("alice", "example.test")
        self.assertEqual(parse_rcpt(b"TO:<PostMaster>", False, postmaster), postmaster)
        self.assertTrue(names_postmaster(b"TO:<PostMaster>"))
        self.assertTrue(names_postmaster(b"to:<postmaster>"))
        self.assertFalse(names_postmaster(b"TO:<postmaster@example.test>"))
        self.assertTrue(names_postmaster(b"TO:postmaster"))
        self.assertFalse(names_postmaster(b"TO:postmaster@example.test"))

    def test_utf8(self) -> None:
        """
        A UTF-8 recipient needs the transaction's SMTPUTF8.
        """
        argument = "TO:<ü@b.test>".encode()
        self.assertEqual(parse_rcpt(argument, True, MX_POSTMASTER), Mailbox("ü", "b.test"))
        self.assertEqual(refusal(parse_rcpt, argument, False, MX_POSTMASTER), (553, "5.6.7"))

    def test_refusals(self) -> None:
        """
        Syntax, parameters, the null path and bad addresses are refused.
        """
        cases = [
            (b"TO:", (501, "5.5.4")),
            (b"FROM:<a@b.test>", (501, "5.5.4")),
            (b"TO:<a@b.test> NOTIFY=NEVER", (555, "5.5.4")),
            (b"TO:<>", (501, "5.1.3")),
            (b"TO:<a b@c.test>", (501, "5.1.3")),
            (b"TO:<" + b"a" * 65 + b"@b.test>", (501, "5.1.3")),
        ]
        for argument, expected in cases:
            self.assertEqual(refusal(parse_rcpt, argument, False, MX_POSTMASTER), expected, argument)


class ParseBdatTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """
        A chunk size of up to 20 digits, optionally followed by LAST in any
        case (RFC 3030 section 2).
        """
        self.assertEqual(parse_bdat(b"0"), ChunkCommand(0, last=False))
        self.assertEqual(parse_bdat(b"1024 LAST"), ChunkCommand(1024, last=True))
        self.assertEqual(parse_bdat(b"007 last"), ChunkCommand(7, last=True))
        self.assertEqual(parse_bdat(b"9" * 20), ChunkCommand(int("9" * 20)))

    def test_readable_size(self) -> None:
        """
        A readable size followed by anything but C{LAST} is 501 5.5.4,
        with the size (its octets are still to be discarded).
        """
        for argument, size in ((b"10 LASTX", 10), (b"10 LAST LAST", 10), (b"10  LAST", 10), (b"3 \x00", 3)):
            error = self.assertRaises(BadChunkCommand, parse_bdat, argument)
            self.assertEqual((error.reply.to_bytes(), error.size),
                             (b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n", size), argument)

    def test_unreadable_size(self) -> None:
        """
        No size, or one that is not 1 to 20 ASCII digits, is 501 5.5.4
        without a size.
        """
        for argument in (b"", b"LAST", b"-1", b"+1", b"1.0", b"0x10", b"10LAST", b" 10", b"1" * 21,
                         "\u0663".encode()):
            error = self.assertRaises(BadChunkCommand, parse_bdat, argument)
            self.assertEqual((error.reply.code, error.size), (501, None), argument)
            self.assertIsInstance(error, CommandRefused)
