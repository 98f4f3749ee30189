"""
Property-based tests (hypothesis) for the header parsers: whatever the
bytes, and wherever the stream is split, they never raise, never lose or
reorder bytes, and never hold more than a bounded amount.
"""

import io
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.cli.sendmail import read_message, recipients_from_headers
from mailappliance.queue.dsn import count_received_headers, read_original_headers
from mailappliance.smtp.headers import MAX_HELD, HeaderCompleter

FIELDS = [(b"Message-ID", b"<q@h>"), (b"Date", b"Thu, 1 Jan 2026 00:00:00 +0000")]
LINES = st.sampled_from([b"Date: x", b"date:y", b"X-Date: z", b" Date: folded", b"Message-ID: <a@b>", b"",
                         b"no colon here", b"Subject: s", b"\tcontinued", b":", b"a" * 1200, b"\xff\x00: bin"])
MESSAGES = st.one_of(st.binary(max_size=3000),
                     st.lists(LINES, max_size=12).map(lambda lines: b"\r\n".join(lines) + b"\r\n"))


def split(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


class HeaderCompleterProperties(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(MESSAGES, st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
    def test_only_adds_fields(self, data, cuts):
        """
        Output = input with at most the two fields (and a separating empty
        line) inserted at one place, for any split; bounded holding.
        """
        completer = HeaderCompleter(FIELDS)
        out = b""
        for piece in split(data, cuts):
            out += completer.feed(piece)
        out += completer.finish()
        whole = HeaderCompleter(FIELDS)
        self.assertEqual(out, whole.feed(data) + whole.finish())
        self.assertGreaterEqual(len(out), len(data))
        extra = len(out) - len(data)
        self.assertLessEqual(extra, len(b"Message-ID: <q@h>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n"))
        # Removing the inserted bytes gives the input back.
        for start in range(len(out) - extra + 1):
            if out[:start] + out[start + extra:] == data:
                break
        else:
            self.fail("the input was changed, not only added to")

    @settings(max_examples=300, deadline=None)
    @given(MESSAGES, st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
    def test_no_fields_only_separates(self, data, cuts):
        """
        With no fields to add, the output is the input, or the input after
        one empty line, the same for any split.
        """
        completer = HeaderCompleter([])
        out = b""
        for piece in split(data, cuts):
            out += completer.feed(piece)
        out += completer.finish()
        whole = HeaderCompleter([])
        self.assertEqual(out, whole.feed(data) + whole.finish())
        self.assertIn(out, (data, b"\r\n" + data))

    def test_bounded(self):
        """
        An endless first line is passed on, never held beyond MAX_HELD.
        """
        completer = HeaderCompleter(FIELDS)
        passed = 0
        for _ in range(100):
            passed += len(completer.feed(b"x" * 1000))
        self.assertGreaterEqual(passed, 100 * 1000 - MAX_HELD)


class SendmailHeaderProperties(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(MESSAGES)
    def test_recipients_from_headers(self, data):
        message = read_message(io.BytesIO(data), False, 10**6)
        found, rest = recipients_from_headers(message)
        self.assertIsInstance(found, list)
        self.assertLessEqual(len(rest), len(message))
        self.assertTrue(message.endswith(rest.split(b"\r\n\r\n", 1)[-1]) or b"\r\n\r\n" not in rest)

    @settings(max_examples=200, deadline=None)
    @given(MESSAGES)
    def test_dsn_header_reader(self, data):
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            headers = read_original_headers(f.name, limit=1000)
            self.assertTrue(data.startswith(headers))
            self.assertLessEqual(len(headers), 1000)
            self.assertGreaterEqual(count_received_headers(f.name), 0)
