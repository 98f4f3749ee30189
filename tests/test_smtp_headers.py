"""
Tests for L{mailappliance.smtp.headers}: completing a submitted message's
header as it streams.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.smtp.headers import MAX_HELD, HeaderCompleter

MESSAGE_ID = b"Message-ID: <Q1@mx.example.test>\r\n"
DATE = b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
FIELDS = [(b"message-id", MESSAGE_ID), (b"date", DATE)]


def complete(message: bytes, cuts: tuple[int, ...] = ()) -> bytes:
    """
    Run C{message} through a completer, cut at C{cuts}.
    """
    completer = HeaderCompleter(FIELDS)
    out = b""
    start = 0
    for cut in (*cuts, len(message)):
        out += completer.feed(message[start:cut])
        start = cut
    return out + completer.finish()


# (message, completed): the cases of RFC 6409 sections 8.2 and 8.3.
CASES = [
    # Both missing: added at the end of the header section.
    (b"From: a@x.test\r\nSubject: hi\r\n\r\nbody\r\n",
     b"From: a@x.test\r\nSubject: hi\r\n" + MESSAGE_ID + DATE + b"\r\nbody\r\n"),
    # Both present: unchanged.
    (b"Date: x\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n", b"Date: x\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n"),
    # Present in another case, and in the obsolete "name :" form.
    (b"DATE: x\r\nmessage-id : <m@x>\r\n\r\nb\r\n", b"DATE: x\r\nmessage-id : <m@x>\r\n\r\nb\r\n"),
    # One missing.
    (b"Subject: s\r\nMessage-Id: <m@x>\r\n\r\n", b"Subject: s\r\nMessage-Id: <m@x>\r\n" + DATE + b"\r\n"),
    # X-Date:, Resent-Date: and a folded " Date:" do not count; nor does a
    # Date: line in the body.
    (b"X-Date: 1\r\nResent-Date: 2\r\nSubject: s\r\n Date: 3\r\n\r\nDate: 4\r\n",
     b"X-Date: 1\r\nResent-Date: 2\r\nSubject: s\r\n Date: 3\r\n" + MESSAGE_ID + DATE + b"\r\nDate: 4\r\n"),
    # No header section at all: the fields and an empty line go first.
    (b"just text\r\nDate: no\r\n", MESSAGE_ID + DATE + b"\r\njust text\r\nDate: no\r\n"),
    (b" indented first line\r\n", MESSAGE_ID + DATE + b"\r\n indented first line\r\n"),
    (b"\r\nbody only\r\n", MESSAGE_ID + DATE + b"\r\nbody only\r\n"),
    (b"", MESSAGE_ID + DATE),
    # A header section ended by a line that is no field.
    (b"Subject: s\r\nno colon here\r\n", b"Subject: s\r\n" + MESSAGE_ID + DATE + b"\r\nno colon here\r\n"),
    # Only a header section.
    (b"Subject: s\r\n", b"Subject: s\r\n" + MESSAGE_ID + DATE),
    # Long lines and an empty field value.
    (b"Subject: " + b"x" * 3000 + b"\r\nDate:\r\n\r\n",
     b"Subject: " + b"x" * 3000 + b"\r\nDate:\r\n" + MESSAGE_ID + b"\r\n"),
]


class HeaderCompleterTests(SynchronousTestCase):
    def test_cases(self) -> None:
        """
        Each case, in one chunk.
        """
        for message, completed in CASES:
            self.assertEqual(complete(message), completed, message)

    def test_every_split(self) -> None:
        """
        The result is the same whichever offset the message is cut at,
        so the header/body split may fall anywhere across chunks.
        """
        for message, completed in CASES:
            if len(message) > 200:
                continue
            for cut in range(len(message) + 1):
                self.assertEqual(complete(message, (cut,)), completed, (message, cut))

    def test_every_pair_of_splits(self) -> None:
        """
        Cut twice, at every pair of offsets (three chunks), including a
        CR and its LF in different chunks.
        """
        message, completed = CASES[0]
        for first in range(len(message) + 1):
            for second in range(first, len(message) + 1):
                self.assertEqual(complete(message, (first, second)), completed, (first, second))

    def test_byte_at_a_time(self) -> None:
        """
        One byte per chunk.
        """
        for message, completed in CASES:
            self.assertEqual(complete(message, tuple(range(1, len(message)))), completed, message)

    def test_body_untouched_and_not_held(self) -> None:
        """
        Once the header section has ended, chunks are passed on as they
        are, at once.
        """
        completer = HeaderCompleter(FIELDS)
        self.assertEqual(completer.feed(b"Date: x\r\nMessage-ID: <m>\r\n\r\n"), b"Date: x\r\nMessage-ID: <m>\r\n\r\n")
        self.assertFalse(completer.in_header)
        chunk = b"Subject: not a header now\r\n" * 10
        self.assertIs(completer.feed(chunk), chunk)
        self.assertEqual(completer.finish(), b"")

    def test_bounded_holding(self) -> None:
        """
        Only the start of a line is held, never more than L{MAX_HELD}
        octets: a field line is passed on as soon as its colon is seen,
        an endless "name" is decided at the limit.
        """
        completer = HeaderCompleter(FIELDS)
        self.assertEqual(completer.feed(b"Subj"), b"")
        self.assertEqual(completer.feed(b"ect: " + b"x" * 5000), b"Subject: " + b"x" * 5000)
        self.assertEqual(completer.feed(b"\r\n" + b"N" * 5000), b"\r\n" + MESSAGE_ID + DATE + b"\r\n" + b"N" * 5000)
        other = HeaderCompleter(FIELDS)
        self.assertEqual(other.feed(b"N" * (MAX_HELD - 1)), b"")
        self.assertEqual(other.feed(b"N"), MESSAGE_ID + DATE + b"\r\n" + b"N" * MAX_HELD)

    def test_unterminated_last_line(self) -> None:
        """
        A message whose last line has no line end (the DATA reader never
        gives one, but BDAT may) gets one before the new fields when that
        line is a field; a last line without a colon is no field, so it
        ends the header section (with the empty line before it) like any
        such line, and is kept as it came.
        """
        self.assertEqual(complete(b"Subject: s"), b"Subject: s\r\n" + MESSAGE_ID + DATE)
        self.assertEqual(complete(b"Subj"), MESSAGE_ID + DATE + b"\r\nSubj")
        self.assertEqual(complete(b"Subject: s\r\nno colon"),
                         b"Subject: s\r\n" + MESSAGE_ID + DATE + b"\r\nno colon")
        # A lone CR at the end is no empty line either (found by the
        # property tests): kept as it came, after the fields.
        self.assertEqual(complete(b"\r"), MESSAGE_ID + DATE + b"\r\n\r")
        self.assertEqual(complete(b"Subject: s\r\n\r"), b"Subject: s\r\n" + MESSAGE_ID + DATE + b"\r\n\r")


# (message, stored): with no fields to add (the smtp service), only whether
# the message has a header section matters: our Received: is in front.
SEPARATOR_CASES = [
    # No header section: the empty line goes first.
    (b"just text\r\nDate: no\r\n", b"\r\njust text\r\nDate: no\r\n"),
    (b" indented first line\r\n", b"\r\n indented first line\r\n"),
    (b"no colon\r\n\r\nbody\r\n", b"\r\nno colon\r\n\r\nbody\r\n"),
    (b"unterminated", b"\r\nunterminated"),
    (b":\r\n", b"\r\n:\r\n"),
    (b"N" * MAX_HELD + b": too long a name\r\n", b"\r\n" + b"N" * MAX_HELD + b": too long a name\r\n"),
    # A header section, an empty one, or nothing at all: unchanged, and
    # only the first line is looked at.
    (b"Subject: s\r\nno colon here\r\n", b"Subject: s\r\nno colon here\r\n"),
    (b"Subject : s\r\n\r\nbody\r\n", b"Subject : s\r\n\r\nbody\r\n"),
    (b"Subject: s", b"Subject: s"),
    (b"\r\nbody only\r\n", b"\r\nbody only\r\n"),
    (b"", b""),
]


def separate(message: bytes, cuts: tuple[int, ...] = ()) -> bytes:
    completer = HeaderCompleter([])
    out = b""
    start = 0
    for cut in (*cuts, len(message)):
        out += completer.feed(message[start:cut])
        start = cut
    return out + completer.finish()


class NoFieldsTests(SynchronousTestCase):
    def test_cases(self) -> None:
        """
        With no fields to add, a message without a header section gets an
        empty line in front; any other message is passed on unchanged.
        """
        for message, stored in SEPARATOR_CASES:
            self.assertEqual(separate(message), stored, message)

    def test_every_split(self) -> None:
        """
        The same whichever offset the message is cut at, and one byte at
        a time.
        """
        for message, stored in SEPARATOR_CASES:
            if len(message) < 200:
                for cut in range(len(message) + 1):
                    self.assertEqual(separate(message, (cut,)), stored, (message, cut))
            self.assertEqual(separate(message, tuple(range(1, len(message)))), stored, message)

    def test_first_line_only(self) -> None:
        """
        Once the first line is known to be a field, the rest is passed on
        at once, unscanned: no other line is held.
        """
        completer = HeaderCompleter([])
        self.assertEqual(completer.feed(b"Subj"), b"")
        self.assertEqual(completer.feed(b"ect: s\r\nno col"), b"Subject: s\r\nno col")
        self.assertFalse(completer.in_header)
        chunk = b"X-Later: field\r\n"
        self.assertIs(completer.feed(chunk), chunk)
        self.assertEqual(completer.finish(), b"")
