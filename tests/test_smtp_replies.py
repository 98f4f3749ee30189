"""
Tests for L{mailappliance.smtp.replies}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.smtp import replies
from mailappliance.smtp.replies import Reply, ehlo_reply, printable, reply


class ReplyTests(SynchronousTestCase):
    def test_single_line(self) -> None:
        """
        A one-line reply is C{code SP status SP text CRLF}.
        """
        self.assertEqual(reply(250, "2.1.0", "Ok").to_bytes(), b"250 2.1.0 Ok\r\n")

    def test_multi_line(self) -> None:
        """
        Every line of a multi-line reply carries the status code; all but
        the last use C{-} after the code (RFC 2034 section 4).
        """
        self.assertEqual(
            reply(214, "2.0.0", "one", "two").to_bytes(),
            b"214-2.0.0 one\r\n214 2.0.0 two\r\n",
        )

    def test_ehlo(self) -> None:
        """
        The EHLO reply has the host name first and one keyword per line,
        without status codes (RFC 5321 section 4.1.1.1).
        """
        self.assertEqual(
            ehlo_reply("mx.example.test", "Hello", ["PIPELINING", "SIZE 10"]).to_bytes(),
            b"250-mx.example.test Hello\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
        )

    def test_refuses_unprintable(self) -> None:
        """
        A line end or non-ASCII character in reply text is a programming
        error, refused rather than sent.
        """
        self.assertRaises(ValueError, reply(250, "2.0.0", "a\r\nb").to_bytes)
        self.assertRaises(UnicodeEncodeError, reply(250, "2.0.0", "\u00e9").to_bytes)

    def test_printable(self) -> None:
        """
        L{printable} escapes non-ASCII, replaces control characters and
        cuts long text.
        """
        self.assertEqual(printable("a\u00e9\r\nb"), "a\\xe9??b")
        self.assertEqual(len(printable("x" * 1000)), 200)

    def test_positive(self) -> None:
        """
        2xx and 3xx replies are positive.
        """
        self.assertTrue(replies.START_DATA.positive)
        self.assertFalse(replies.NEED_MAIL.positive)

    def test_fixed_replies_have_matching_classes(self) -> None:
        """
        Every fixed reply's status class agrees with its code (RFC 3463:
        2xx with 2.x.x, 4xx with 4.x.x, 5xx with 5.x.x) and renders.
        """
        fixed = [value for value in vars(replies).values() if isinstance(value, Reply)]
        fixed += [
            replies.greeting("h"),
            replies.closing("h"),
            replies.timeout("h"),
            replies.too_many_errors("h"),
            replies.queued("Q"),
        ]
        self.assertGreater(len(fixed), 30)
        for item in fixed:
            item.to_bytes()
            if item.code != 354:
                self.assertEqual(item.status[0], str(item.code)[0], item)

    def test_challenge(self) -> None:
        """
        A SASL challenge is C{334}, a space and the base64 text, with no
        enhanced status code, even when empty (RFC 4954 section 4).
        """
        self.assertEqual(replies.challenge("").to_bytes(), b"334 \r\n")
        self.assertEqual(replies.challenge("VXNlcm5hbWU6").to_bytes(), b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(replies.too_many_auth_failures("h").to_bytes(),
                         b"421 4.7.0 h Error: too many authentication failures\r\n")
