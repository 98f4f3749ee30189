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
        The EHLO keywords, with SIZE from the settings; CHUNKING on both
        services.
        """
        self.assertEqual(
            policy("192.0.2.1").extensions(),
            ["PIPELINING", "SIZE 1000", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING"],
        )
        self.assertEqual(
            policy("192.0.2.1", settings=SMTPSettings(hostname="h", service="submission")).extensions()[-1],
            "CHUNKING",
        )

    def test_starttls(self) -> None:
        """
        STARTTLS is offered and allowed where it is possible and TLS is
        not active yet; 503 once it is, 502 where it is not possible.
        """
        possible = policy("192.0.2.1", starttls_possible=True)
        self.assertTrue(possible.offers_starttls)
        self.assertIsNone(possible.starttls_refusal())
        self.assertEqual(possible.extensions()[-1], "STARTTLS")
        active = possible.with_facts(tls=True)
        self.assertFalse(active.offers_starttls)
        self.assertEqual(active.starttls_refusal().to_bytes(), b"503 5.5.1 Error: TLS already active\r\n")
        self.assertEqual(policy("192.0.2.1", tls=True).starttls_refusal().code, 503)
        impossible = policy("192.0.2.1")
        self.assertFalse(impossible.offers_starttls)
        self.assertEqual(impossible.starttls_refusal().to_bytes(), b"502 5.5.1 Error: command not implemented\r\n")

    def test_auth_offer(self) -> None:
        """
        AUTH is offered on submission with a checker, over TLS or to
        trusted networks; 538 to others there; 503 on the MTA service.
        """
        submission = SMTPSettings(hostname="h", service="submission", trusted_networks=SETTINGS.trusted_networks)
        cases = [
            (policy("10.0.0.1", settings=submission, auth_possible=True), True, None),
            (policy("192.0.2.1", settings=submission, auth_possible=True, tls=True), True, None),
            (policy("192.0.2.1", settings=submission, auth_possible=True), False, 538),
            (policy(None, settings=submission, auth_possible=True), False, 538),
            (policy("10.0.0.1", settings=submission), False, 503),
            (policy("10.0.0.1", auth_possible=True, tls=True), False, 503),
        ]
        for session, offered, code in cases:
            self.assertEqual(session.offers_auth, offered, session.facts)
            self.assertEqual(("AUTH PLAIN LOGIN" in session.extensions()), offered)
            refusal = session.auth_refusal()
            self.assertEqual(refusal.code if refusal else None, code, session.facts)
        self.assertEqual(
            policy("192.0.2.1", settings=submission, auth_possible=True).auth_refusal().to_bytes(),
            b"538 5.7.11 Encryption required for requested authentication mechanism\r\n",
        )
        self.assertEqual(
            policy("10.0.0.1", settings=submission, auth_possible=True, starttls_possible=True).extensions()[-2:],
            ["STARTTLS", "AUTH PLAIN LOGIN"],
        )

    def test_sender_ownership(self) -> None:
        """
        On submission an authenticated user may use their own address (in
        any case) or one that resolves to them; not another, not the null
        sender. A lookup is needed only for addresses not their own. The
        MTA service allows everything.
        """
        submission = SMTPSettings(hostname="h", service="submission")
        alice = Mailbox("alice", "example.test")
        session = policy("192.0.2.1", settings=submission, user=alice)
        other = Mailbox("team", "example.test")
        self.assertFalse(session.sender_needs_lookup(Mailbox("ALICE", "example.test")))
        self.assertIsNone(session.sender_refusal(Mailbox("ALICE", "example.test")))
        self.assertTrue(session.sender_needs_lookup(other))
        self.assertIsNone(session.sender_refusal(other, resolves_to_user=True))
        self.assertEqual(session.sender_refusal(other).to_bytes(), b"553 5.7.1 Sender address not owned by user\r\n")
        self.assertFalse(session.sender_needs_lookup(None))
        self.assertEqual(session.sender_refusal(None).code, 553)
        anonymous = policy("10.0.0.1", settings=submission)
        self.assertFalse(anonymous.sender_needs_lookup(other))
        mta = policy("192.0.2.1", user=alice)
        self.assertFalse(mta.sender_needs_lookup(other))
        self.assertIsNone(mta.sender_refusal(other))
        self.assertIsNone(mta.sender_refusal(None))

    def test_adds_missing_headers(self) -> None:
        """
        Only submission completes headers.
        """
        self.assertTrue(policy(settings=SMTPSettings(hostname="h", service="submission")).adds_missing_headers)
        self.assertFalse(policy().adds_missing_headers)

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
