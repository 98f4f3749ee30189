"""
Tests for L{mailappliance.smtp.policy}.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import Mailbox
from mailappliance.smtp.policy import (
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_PEER,
    ConnectionLimiter,
    SessionFacts,
    SessionPolicy,
    SMTPSettings,
    peer_address,
)

SETTINGS = SMTPSettings(
    hostname="mx.example.test",
    max_message_size=1000,
    trusted_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")),
)


def policy(peer: str | None = None, settings: SMTPSettings = SETTINGS, **facts: object) -> SessionPolicy:
    address = ipaddress.ip_address(peer) if peer else None
    return SessionPolicy(settings, SessionFacts(peer=address, **facts))  # type: ignore[arg-type]


class SettingsTests(SynchronousTestCase):
    def test_validation(self) -> None:
        """
        Unknown services and non-positive limits are refused.
        """
        self.assertRaises(ValueError, SMTPSettings, hostname="h", service="pop3")
        self.assertRaises(ValueError, SMTPSettings, hostname="h", max_recipients=0)
        self.assertRaises(ValueError, SMTPSettings, hostname="h", idle_timeout=0)

    def test_defaults(self) -> None:
        """
        The defaults are those of SPEC section 2.
        """
        settings = SMTPSettings(hostname="h")
        self.assertEqual(
            (settings.max_message_size, settings.max_recipients, settings.idle_timeout, settings.max_connections,
             settings.max_connections_per_ip, settings.service),
            (26214400, 100, 300.0, 200, 20, "smtp"),
        )
        self.assertEqual([str(n) for n in settings.trusted_networks], ["127.0.0.0/8", "::1/128"])


class SessionPolicyTests(SynchronousTestCase):
    def test_relay(self) -> None:
        """
        Trusted networks and authenticated sessions may relay; others not.
        """
        self.assertTrue(policy("10.1.2.3").may_relay)
        self.assertTrue(policy("2001:db8::5").may_relay)
        self.assertFalse(policy("192.0.2.1").may_relay)
        self.assertFalse(policy(None).may_relay)
        self.assertTrue(policy("192.0.2.1", user=Mailbox("a", "b.test")).may_relay)

    def test_auth_required(self) -> None:
        """
        Submission requires AUTH before MAIL; the MTA service never does.
        """
        submission = SMTPSettings(hostname="h", service="submission")
        self.assertFalse(policy("192.0.2.1").auth_required)
        self.assertFalse(policy("10.0.0.1").auth_required)
        self.assertTrue(policy("10.0.0.1", settings=submission).auth_required)
        self.assertFalse(policy("10.0.0.1", settings=submission, user=Mailbox("a", "b.test")).auth_required)

    def test_extensions(self) -> None:
        """
        The EHLO keywords, with SIZE from the settings.
        """
        self.assertEqual(
            policy("192.0.2.1").extensions(),
            ["PIPELINING", "SIZE 1000", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"],
        )

    def test_received_protocol(self) -> None:
        """
        The C{with} value follows RFC 3848 and RFC 6531.
        """
        plain = policy("192.0.2.1")
        self.assertEqual(plain.received_protocol(False, False), "SMTP")
        self.assertEqual(plain.received_protocol(True, False), "ESMTP")
        self.assertEqual(plain.received_protocol(True, True), "UTF8SMTP")
        tls = plain.with_facts(tls=True)
        self.assertEqual(tls.received_protocol(True, False), "ESMTPS")
        both = tls.with_facts(user=Mailbox("a", "b.test"))
        self.assertEqual(both.received_protocol(True, False), "ESMTPSA")
        self.assertEqual(both.received_protocol(True, True), "UTF8SMTPSA")
        self.assertEqual(plain.facts.tls, False)

    def test_peer_address(self) -> None:
        """
        IPv4-mapped IPv6 peers count as IPv4; non-IP hosts are L{None}.
        """
        self.assertEqual(peer_address("::ffff:10.0.0.1"), ipaddress.ip_address("10.0.0.1"))
        self.assertEqual(peer_address("fe80::1%eth0"), ipaddress.ip_address("fe80::1"))
        self.assertIsNone(peer_address("/tmp/socket"))
        self.assertTrue(policy(str(peer_address("::ffff:10.0.0.1"))).trusted)


class ConnectionLimiterTests(SynchronousTestCase):
    def test_limits(self) -> None:
        """
        Sessions are counted in total and per peer, and released.
        """
        limiter = ConnectionLimiter(3, 2)
        self.assertIsNone(limiter.admit("a"))
        self.assertIsNone(limiter.admit("a"))
        self.assertEqual(limiter.admit("a"), TOO_MANY_FROM_PEER)
        self.assertIsNone(limiter.admit("b"))
        self.assertEqual(limiter.admit("c"), TOO_MANY_CONNECTIONS)
        limiter.release("a")
        self.assertEqual((limiter.total, limiter.count("a")), (2, 1))
        self.assertIsNone(limiter.admit("c"))
        limiter.release("a")
        limiter.release("b")
        limiter.release("c")
        self.assertEqual((limiter.total, limiter.count("a")), (0, 0))
