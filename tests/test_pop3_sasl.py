"""
Tests for L{mailappliance.pop3.sasl}.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.pop3.sasl import (
    PlainCredentials,
    SASLCancelled,
    SASLError,
    decode_response,
    parse_plain,
)


class DecodeResponseTests(SynchronousTestCase):
    def test_base64(self):
        """
        Strict base64 is decoded.
        """
        self.assertEqual(decode_response(base64.b64encode(b"\x00a\x00b")), b"\x00a\x00b")

    def test_cancel(self):
        """
        C{*} cancels (RFC 5034 section 4).
        """
        self.assertRaises(SASLCancelled, decode_response, b"*")

    def test_empty_initial(self):
        """
        C{=} is an empty initial response; elsewhere it is bad base64.
        """
        self.assertEqual(decode_response(b"=", initial=True), b"")
        self.assertRaises(SASLError, decode_response, b"=")

    def test_bad_base64(self):
        """
        Non-alphabet bytes, bad padding and non-ASCII are rejected with the
        reply text.
        """
        for bad in [b"AG$$", b"abc", b"\xff\xfe", b"AGE=AGI", b"A B="]:
            e = self.assertRaises(SASLError, decode_response, bad)
            self.assertEqual(str(e), "Invalid base64 data")


class ParsePlainTests(SynchronousTestCase):
    def test_without_authzid(self):
        """
        NUL authcid NUL passwd.
        """
        self.assertEqual(parse_plain(b"\x00alice@example.test\x00pw"), PlainCredentials(b"alice@example.test", b"pw"))

    def test_same_authzid(self):
        """
        An authzid equal to the authcid (in any case) is accepted.
        """
        self.assertEqual(parse_plain(b"Alice@Example.test\x00alice@example.test\x00pw").authcid, b"alice@example.test")

    def test_other_authzid(self):
        """
        Acting as another user is refused.
        """
        self.assertRaises(SASLError, parse_plain, b"bob@example.test\x00alice@example.test\x00pw")

    def test_malformed(self):
        """
        Wrong field counts, empty name or password, overlong fields.
        """
        for bad in [
            b"",
            b"alice",
            b"\x00alice",
            b"\x00\x00pw",
            b"\x00alice\x00",
            b"a\x00b\x00c\x00d",
            b"\x00" + b"a" * 256 + b"\x00pw",
        ]:
            self.assertRaises(SASLError, parse_plain, bad)
