"""
Tests for L{mailappliance.smtp.received}.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import Mailbox
from mailappliance.smtp.received import address_literal, received_header, rfc5322_date

# 2023-11-14 22:13:20 UTC
WHEN = 1700000000.0


class ReceivedTests(SynchronousTestCase):
    def test_date(self) -> None:
        """
        Dates are RFC 5322 date-times in UTC.
        """
        self.assertEqual(rfc5322_date(WHEN), "Tue, 14 Nov 2023 22:13:20 +0000")
        self.assertEqual(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000")

    def test_literals(self) -> None:
        """
        Peers are written as RFC 5321 address literals.
        """
        self.assertEqual(address_literal(ipaddress.ip_address("192.0.2.1")), "[192.0.2.1]")
        self.assertEqual(address_literal(ipaddress.ip_address("2001:DB8:0::1")), "[IPv6:2001:db8::1]")
        self.assertEqual(address_literal(None), "[unknown]")

    def test_one_recipient(self) -> None:
        """
        With one recipient the header names it in a C{for} clause.
        """
        header = received_header(
            "client.test", ipaddress.ip_address("192.0.2.1"), "mx.example.test", "ESMTP", "QID1",
            [Mailbox("alice", "example.test")], WHEN,
        )
        self.assertEqual(
            header,
            b"Received: from client.test ([192.0.2.1])\r\n"
            b"\tby mx.example.test (mailappliance) with ESMTP id QID1\r\n"
            b"\tfor <alice@example.test>; Tue, 14 Nov 2023 22:13:20 +0000\r\n",
        )

    def test_several_recipients(self) -> None:
        """
        With several recipients none is named (they would see each other).
        """
        header = received_header(
            "c", None, "mx", "SMTP", "Q", [Mailbox("a", "b.test"), Mailbox("c", "d.test")], WHEN
        )
        self.assertEqual(
            header,
            b"Received: from c ([unknown])\r\n\tby mx (mailappliance) with SMTP id Q;"
            b" Tue, 14 Nov 2023 22:13:20 +0000\r\n",
        )

    def test_hostile_helo(self) -> None:
        """
        Characters of the HELO name that could break the header are
        replaced, and a long name is cut.
        """
        header = received_header("a(b)\r\nX: y;" + "z" * 300, None, "mx", "ESMTP", "Q", [], WHEN)
        first = header.split(b"\r\n")[0]
        self.assertEqual(first, b"Received: from a?b???X:?y?" + b"z" * 244 + b" ([unknown])")

    def test_utf8_recipient(self) -> None:
        """
        A UTF-8 recipient (SMTPUTF8 message) is written in UTF-8.
        """
        header = received_header("c", None, "mx", "UTF8SMTP", "Q", [Mailbox("ü", "b.test")], WHEN)
        self.assertIn("for <ü@b.test>;".encode(), header)

    def test_tls(self) -> None:
        """
        The TLS in use is a comment line after the C{from} clause.
        """
        header = received_header("c", None, "mx", "ESMTPS", "Q", [], WHEN,
                                 tls="using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384")
        self.assertEqual(
            header,
            b"Received: from c ([unknown])\r\n"
            b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"
            b"\tby mx (mailappliance) with ESMTPS id Q; Tue, 14 Nov 2023 22:13:20 +0000\r\n",
        )
