"""
Tests for L{mailappliance.queue.dsn}.
"""

import email
import email.policy

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.queue.dsn import (
    DELAYED,
    RecipientReport,
    build_dsn,
    count_received_headers,
    read_original_headers,
)


class BuildDSNTests(SynchronousTestCase):
    def build(self, **kw):
        args = dict(
            hostname="mail.example.test",
            queue_id="QID123",
            sender="alice@example.test",
            arrival=1700000000.0,
            reports=[
                RecipientReport("bob@remote.test", "5.1.1", "550 5.1.1 <bob@remote.test>: no such user",
                                original="team@example.test", remote_mta="mx.remote.test", smtp_reply=True),
                RecipientReport("carol@gone.test", "5.1.2", "domain gone.test does not exist"),
            ],
            original_headers=b"Subject: hello\r\nFrom: alice@example.test\r\n",
            now=1700003600.0,
        )
        args.update(kw)
        return build_dsn(**args)

    def test_reply_with_8bit_and_controls(self):
        """
        A remote reply in UTF-8 with control characters in it: the text
        part keeps the UTF-8 (and says 8bit), the ASCII delivery-status
        part escapes it, and no control character reaches either.
        """
        reply = "550 5.1.1 Empf\u00e4nger unbekannt \x01\x1b[31m\x9b ctl"
        data = self.build(reports=[RecipientReport("bob@remote.test", "5.1.1", reply, smtp_reply=True)])
        self.assertNotRegex(data, rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
        self.assertNotIn("\x9b".encode(), data)
        self.assertIn(b"Content-Transfer-Encoding: 8bit", data)
        msg = email.message_from_bytes(data, policy=email.policy.default)
        text, status = list(msg.iter_parts())[:2]
        self.assertIn("Empf\u00e4nger unbekannt ??[31m? ctl", text.get_content())
        self.assertEqual(status.get_content_type(), "message/delivery-status")
        self.assertIn(b"Diagnostic-Code: smtp; 550 5.1.1 Empf\\xe4nger unbekannt ??[31m? ctl", status.as_bytes())

    def test_structure(self):
        """
        A multipart/report with a text part, a delivery-status part naming
        each recipient with its status and the remote reply, and the
        original headers.
        """
        data = self.build()
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        msg = email.message_from_bytes(data, policy=email.policy.default)
        self.assertEqual(msg["From"], "Mail Delivery System <MAILER-DAEMON@mail.example.test>")
        self.assertEqual(msg["To"].addresses[0].addr_spec, "alice@example.test")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        parts = list(msg.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        self.assertIn("bob@remote.test", parts[0].get_content())
        status = parts[1].as_bytes().decode()
        self.assertIn("Reporting-MTA: dns; mail.example.test", status)
        self.assertIn("Original-Recipient: rfc822; team@example.test", status)
        self.assertIn("Final-Recipient: rfc822; bob@remote.test", status)
        self.assertIn("Action: failed", status)
        self.assertIn("Status: 5.1.1", status)
        self.assertIn("Remote-MTA: dns; mx.remote.test", status)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: no such user", status)
        self.assertIn("Final-Recipient: rfc822; carol@gone.test", status)
        self.assertIn("Status: 5.1.2", status)
        self.assertIn(b"Subject: hello\r\nFrom: alice@example.test\r\n", data)

    def test_delay(self):
        """
        A delay warning says "delayed" and when retries end.
        """
        data = self.build(action=DELAYED, retry_until=1700400000.0,
                          reports=[RecipientReport("bob@remote.test", "4.4.1", "connection refused")])
        self.assertIn(b"Action: delayed", data)
        self.assertIn(b"Will-Retry-Until:", data)
        self.assertIn(b"THIS IS A WARNING ONLY", data)

    def test_utf8(self):
        """
        UTF-8 addresses use the utf-8 address type and global delivery
        status.
        """
        data = self.build(reports=[RecipientReport("jöran@remote.test", "5.1.1", "no")])
        self.assertIn("Final-Recipient: utf-8; jöran@remote.test".encode(), data)
        self.assertIn(b"message/global-delivery-status", data)

    def test_utf8_headers(self):
        """
        Original headers with UTF-8 in them are returned as
        message/global-headers (RFC 6533 section 6.3), in an 8bit message;
        ASCII headers stay text/rfc822-headers in a 7bit one.
        """
        headers = "Subject: Grüße\r\nFrom: José <jose@example.test>\r\n".encode()
        data = self.build(original_headers=headers)
        msg = email.message_from_bytes(data, policy=email.policy.default)
        self.assertEqual([p.get_content_type() for p in msg.iter_parts()],
                         ["text/plain", "message/delivery-status", "message/global-headers"])
        self.assertEqual(msg["Content-Transfer-Encoding"], "8bit")
        self.assertIn(b"Content-Type: message/global-headers\r\n\r\n" + headers, data)
        self.assertNotIn(b"text/rfc822-headers", data)
        data = self.build()
        self.assertIn(b"Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\n", data)
        self.assertIn(b"\r\nContent-Transfer-Encoding: 7bit\r\n", data)

    def test_dates_in_utc(self):
        """
        Date, Arrival-Date, Last-Attempt-Date and Will-Retry-Until are UTC
        written +0000 (RFC 5322 section 3.3: -0000 means an unknown zone).
        """
        data = self.build(action=DELAYED, retry_until=1700400000.0)
        self.assertIn(b"\r\nDate: Tue, 14 Nov 2023 23:13:20 +0000\r\n", data)
        self.assertIn(b"\r\nArrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n", data)
        self.assertIn(b"\r\nLast-Attempt-Date: Tue, 14 Nov 2023 23:13:20 +0000\r\n", data)
        self.assertIn(b"\r\nWill-Retry-Until: Sun, 19 Nov 2023 13:20:00 +0000\r\n", data)
        self.assertIn(b"Delivery will be retried until Sun, 19 Nov 2023 13:20:00 +0000.", data)
        self.assertNotIn(b"-0000", data)

    def test_double_bounce_to_postmaster(self):
        """
        A double bounce (the original had the null sender) is addressed to
        the postmaster and worded for them, not for a sender.
        """
        data = self.build(sender="", postmaster="postmaster@example.test")
        msg = email.message_from_bytes(data, policy=email.policy.default)
        self.assertIn(b"\r\nTo: <postmaster@example.test>\r\n", data)
        self.assertEqual(msg["Subject"], "Postmaster Copy: Undelivered Mail")
        text = msg.get_payload()[0].get_content()
        self.assertIn("A message with the null sender (<>)", text)
        self.assertIn("this report goes to the\r\npostmaster", text)
        self.assertNotIn("your message", text)
        self.assertIn("Final-Recipient: rfc822; bob@remote.test", msg.get_payload()[1].as_string())
        # A DSN to the sender is unchanged.
        msg = email.message_from_bytes(self.build(), policy=email.policy.default)
        self.assertEqual(msg["To"].addresses[0].addr_spec, "alice@example.test")
        self.assertEqual(msg["Subject"], "Undelivered Mail Returned to Sender")
        self.assertIn("your message could not", msg.get_payload()[0].get_content())


class HeaderTests(SynchronousTestCase):
    def test_read_headers(self):
        path = FilePath(self.mktemp())
        path.setContent(b"Received: a\r\nReceived: b\r\nSubject: x\r\n\r\nbody\r\nReceived: not a header\r\n")
        self.assertEqual(read_original_headers(path.path), b"Received: a\r\nReceived: b\r\nSubject: x\r\n")
        self.assertEqual(count_received_headers(path.path), 2)

    def test_read_headers_limit(self):
        path = FilePath(self.mktemp())
        path.setContent(b"X: " + b"a" * 100 + b"\r\nY: b\r\n" + b"Z: " + b"c" * 100 + b"\r\n\r\n")
        self.assertEqual(read_original_headers(path.path, limit=115), b"X: " + b"a" * 100 + b"\r\nY: b\r\n")

    def test_stops_at_body_size(self):
        """
        A queue file of layout version 2 goes on with its envelope and
        trailer: with C{body_size}, a body that is all header (no blank
        line) yields its own lines only, and a C{Received:}-looking line of
        the envelope is not counted.
        """
        path = FilePath(self.mktemp())
        body = b"Received: a\r\nSubject: x\r\n"
        path.setContent(body + b"Received: from the envelope\r\n" + b"MAQ2 0000000030 00000000\n")
        # Reading to the end of the file would take the envelope's line.
        self.assertEqual(count_received_headers(path.path), 2)
        self.assertEqual(read_original_headers(path.path, len(body)), body)
        self.assertEqual(count_received_headers(path.path, len(body)), 1)
        self.assertEqual(read_original_headers(path.path, 0), b"")
