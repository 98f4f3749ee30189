"""
Tests for L{mailappliance.pop3.settings}.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.pop3.settings import POP3Settings, parse_peer_ip


class SettingsTests(SynchronousTestCase):
    def test_defaults(self):
        """
        The defaults: 10 minutes idle, loopback trusted, 200 and 20
        connections.
        """
        s = POP3Settings("mail.example.test")
        self.assertEqual((s.idle_timeout, s.max_connections, s.max_connections_per_ip), (600.0, 200, 20))
        self.assertTrue(s.is_trusted("127.0.0.1"))
        self.assertTrue(s.is_trusted("::1"))
        self.assertFalse(s.is_trusted("192.0.2.1"))

    def test_frozen(self):
        """
        Settings cannot be changed after creation.
        """
        s = POP3Settings("mail.example.test")
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, s, "max_connections", 1)

    def test_is_trusted(self):
        """
        Mapped IPv4 addresses count as IPv4; zone indexes are dropped;
        anything that is not an IP address is untrusted.
        """
        s = POP3Settings("h", trusted_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fe80::/10")))
        self.assertTrue(s.is_trusted("::ffff:10.1.2.3"))
        self.assertTrue(s.is_trusted("fe80::1%eth0"))
        self.assertFalse(s.is_trusted("11.0.0.1"))
        for other in [None, "", "localhost", "/run/socket"]:
            self.assertFalse(s.is_trusted(other))

    def test_parse_peer_ip(self):
        """
        L{parse_peer_ip} unmaps and normalises.
        """
        self.assertEqual(str(parse_peer_ip("::ffff:192.0.2.1")), "192.0.2.1")
        self.assertEqual(str(parse_peer_ip("2001:DB8::1")), "2001:db8::1")
        self.assertIsNone(parse_peer_ip("not an address"))
