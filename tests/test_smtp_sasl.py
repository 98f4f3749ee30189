"""
Tests for L{mailappliance.smtp.sasl}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.smtp.sasl import (
    BadBase64,
    Credentials,
    LoginMechanism,
    PlainMechanism,
    SASLCancelled,
    SASLFailure,
    decode_response,
    encode_challenge,
    make_mechanism,
)


class DecodeTests(SynchronousTestCase):
    def test_base64(self) -> None:
        """
        Responses are strict base64; an empty line is an empty response.
        """
        self.assertEqual(decode_response(b"YWJj"), b"abc")
        self.assertEqual(decode_response(b""), b"")
        for bad in (b"YWJ", b"YW Jj", b"YWJj\n", b"====", b"\xff"):
            self.assertRaises(BadBase64, decode_response, bad)

    def test_cancel_and_empty_initial(self) -> None:
        """
        C{*} cancels a response; on the AUTH line it is just bad base64,
        and C{=} is the empty initial response.
        """
        self.assertRaises(SASLCancelled, decode_response, b"*")
        self.assertRaises(BadBase64, decode_response, b"*", initial=True)
        self.assertEqual(decode_response(b"=", initial=True), b"")
        self.assertRaises(BadBase64, decode_response, b"=")

    def test_challenge(self) -> None:
        """
        Challenges are base64 text; the empty one is empty.
        """
        self.assertEqual(encode_challenge(b""), "")
        self.assertEqual(encode_challenge(b"Username:"), "VXNlcm5hbWU6")


class PlainTests(SynchronousTestCase):
    def test_credentials(self) -> None:
        """
        C{authzid NUL authcid NUL passwd}, with an empty authzid or one
        equal to the login name in any case.
        """
        self.assertEqual(PlainMechanism().step(b"\0alice@x.test\0pw"), Credentials(b"alice@x.test", b"pw"))
        self.assertEqual(PlainMechanism().step(b"ALICE@x.test\0alice@x.test\0pw"),
                         Credentials(b"alice@x.test", b"pw"))

    def test_failures(self) -> None:
        """
        A wrong number of fields, an empty name or password, an over-long
        field, or another authzid fail; the login name is kept when there
        is one.
        """
        for message, authcid in [
            (b"alice@x.test pw", None),
            (b"\0alice@x.test\0pw\0", None),
            (b"\0\0pw", None),
            (b"\0alice@x.test\0", b"alice@x.test"),
            (b"\0alice@x.test\0" + b"p" * 256, b"alice@x.test"),
            (b"bob@x.test\0alice@x.test\0pw", b"alice@x.test"),
        ]:
            error = self.assertRaises(SASLFailure, PlainMechanism().step, message)
            self.assertEqual(error.authcid, authcid, message)

    def test_password_not_in_repr(self) -> None:
        """
        The password never shows in a repr (and so in a traceback or log).
        """
        self.assertNotIn("secret", repr(Credentials(b"a", b"secret")))


class LoginTests(SynchronousTestCase):
    def test_steps(self) -> None:
        """
        User name, then password.
        """
        mechanism = LoginMechanism()
        self.assertEqual(mechanism.initial_challenge, b"Username:")
        self.assertEqual(mechanism.step(b"alice@x.test"), b"Password:")
        self.assertEqual(mechanism.step(b"pw"), Credentials(b"alice@x.test", b"pw"))

    def test_too_long(self) -> None:
        """
        Fields over 255 octets fail.
        """
        self.assertRaises(SASLFailure, LoginMechanism().step, b"a" * 256)
        mechanism = LoginMechanism()
        mechanism.step(b"alice@x.test")
        self.assertEqual(self.assertRaises(SASLFailure, mechanism.step, b"p" * 256).authcid, b"alice@x.test")

    def test_make(self) -> None:
        """
        Mechanisms are found by name in any case; others are L{None}.
        """
        self.assertIsInstance(make_mechanism("plain"), PlainMechanism)
        self.assertIsInstance(make_mechanism("LOGIN"), LoginMechanism)
        self.assertIsNone(make_mechanism("CRAM-MD5"))
        self.assertIsNot(make_mechanism("LOGIN"), make_mechanism("LOGIN"))
