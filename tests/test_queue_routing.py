"""
Tests for L{mailappliance.queue.routing}.
"""

import random

from twisted.internet import defer
from twisted.names import dns, error
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.queue.routing import MXRouter, RouteHost, RoutingError, SmarthostRouter


class FakeDNS:
    """
    A resolver answering from a table: C{records[(name, type)]} is a list of
    payloads, or an exception instance to fail with. Unknown names with no
    entry at all are NXDOMAIN; known names without that type are NODATA.
    """

    def __init__(self, records):
        self.records = records
        self.names = {name for name, _ in records}
        self.queries = []

    def _lookup(self, name, kind):
        self.queries.append((name, kind))
        entry = self.records.get((name, kind))
        if isinstance(entry, Exception):
            return defer.fail(entry)
        if entry is None:
            if name not in self.names:
                return defer.fail(error.DNSNameError(name))
            entry = []
        answers = [dns.RRHeader(name=name, type=kind, payload=p) for p in entry]
        return defer.succeed((answers, [], []))

    def lookupMailExchange(self, name, timeout=None):
        return self._lookup(name, dns.MX)

    def lookupAddress(self, name, timeout=None):
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name, timeout=None):
        return self._lookup(name, dns.AAAA)


def mx(preference, name):
    return dns.Record_MX(preference, name.encode())


def a(address):
    return dns.Record_A(address)


def aaaa(address):
    return dns.Record_AAAA(address)


class MXRouterTests(SynchronousTestCase):
    def route(self, records, domain="example.net", port=2525, seed=1):
        router = MXRouter(FakeDNS(records), port, rng=random.Random(seed))
        return router.route(domain)

    def test_preference_order(self):
        """
        MX hosts come in preference order with their A and AAAA addresses.
        """
        hosts = self.successResultOf(self.route({
            ("example.net", dns.MX): [mx(20, "mx2.example.net"), mx(10, "mx1.example.net")],
            ("mx1.example.net", dns.A): [a("192.0.2.1")],
            ("mx1.example.net", dns.AAAA): [aaaa("2001:db8::1")],
            ("mx2.example.net", dns.A): [a("192.0.2.2")],
        }))
        self.assertEqual(hosts, [
            RouteHost("mx1.example.net", ("192.0.2.1", "2001:db8::1"), 2525),
            RouteHost("mx2.example.net", ("192.0.2.2",), 2525),
        ])

    def test_own_host_in_mx(self):
        """
        An MX naming our own host (any case, trailing dot) is dropped with
        those less preferred (RFC 5321 section 5.1); when it is the best
        one, the mail would loop back to us: a permanent 5.4.6.
        """
        records = {
            ("example.net", dns.MX): [mx(10, "backup.example.net"), mx(20, "MX.Example.Test."),
                                      mx(30, "other.example.net")],
            ("backup.example.net", dns.A): [a("192.0.2.1")],
            ("other.example.net", dns.A): [a("192.0.2.3")],
        }
        router = MXRouter(FakeDNS(records), 25, hostname="mx.example.test")
        hosts = self.successResultOf(router.route("example.net"))
        self.assertEqual([h.name for h in hosts], ["backup.example.net"])
        records[("example.net", dns.MX)] = [mx(10, "mx.example.test"), mx(20, "backup.example.net")]
        failure = self.failureResultOf(router.route("example.net"), RoutingError)
        self.assertTrue(failure.value.permanent)
        self.assertEqual(failure.value.status, "5.4.6")
        self.assertEqual(failure.value.reason, "mail for example.net loops back to myself (its best MX is "
                                               "mx.example.test)")

    def test_equal_preference_shuffled(self):
        """
        Hosts of equal preference are shuffled; every order appears.
        """
        records = {("example.net", dns.MX): [mx(10, "a.example.net"), mx(10, "b.example.net"), mx(5, "c.example.net")]}
        for name in ("a", "b", "c"):
            records[(f"{name}.example.net", dns.A)] = [a("192.0.2.9")]
        orders = set()
        for seed in range(20):
            hosts = self.successResultOf(self.route(records, seed=seed))
            orders.add(tuple(h.name for h in hosts))
        self.assertEqual(orders, {("c.example.net", "a.example.net", "b.example.net"),
                                  ("c.example.net", "b.example.net", "a.example.net")})

    def test_implicit_mx(self):
        """
        Without MX records, the domain's own address records are used.
        """
        hosts = self.successResultOf(self.route({("example.net", dns.A): [a("192.0.2.7")]}))
        self.assertEqual(hosts, [RouteHost("example.net", ("192.0.2.7",), 2525)])

    def test_nxdomain(self):
        """
        A domain that does not exist fails permanently with 5.1.2.
        """
        f = self.failureResultOf(self.route({}), RoutingError)
        self.assertTrue(f.value.permanent)
        self.assertEqual(f.value.status, "5.1.2")

    def test_null_mx(self):
        """
        A null MX (RFC 7505) fails permanently with 5.1.10, "Recipient
        address has null MX" (registered by RFC 7505 section 6).
        """
        f = self.failureResultOf(self.route({("example.net", dns.MX): [mx(0, "")]}), RoutingError)
        self.assertTrue(f.value.permanent)
        self.assertEqual(f.value.status, "5.1.10")
        self.assertEqual(f.value.reason, "domain example.net accepts no mail (null MX, RFC 7505)")

    def test_servfail_temporary(self):
        """
        SERVFAIL is temporary (4.4.3).
        """
        f = self.failureResultOf(self.route({("example.net", dns.MX): error.DNSServerError("x")}), RoutingError)
        self.assertFalse(f.value.permanent)
        self.assertEqual(f.value.status, "4.4.3")
        self.assertIn("SERVFAIL", f.value.reason)

    def test_timeout_temporary(self):
        f = self.failureResultOf(self.route({("example.net", dns.MX): defer.TimeoutError()}), RoutingError)
        self.assertFalse(f.value.permanent)

    def test_mx_host_without_address_skipped(self):
        """
        An MX host without addresses is skipped; the next one is used.
        """
        hosts = self.successResultOf(self.route({
            ("example.net", dns.MX): [mx(10, "gone.example.net"), mx(20, "mx.example.net")],
            ("mx.example.net", dns.A): [a("192.0.2.3")],
        }))
        self.assertEqual([h.name for h in hosts], ["mx.example.net"])

    def test_no_mx_host_has_address(self):
        """
        If no MX host has an address, the failure is temporary.
        """
        f = self.failureResultOf(self.route({("example.net", dns.MX): [mx(10, "gone.example.net")]}), RoutingError)
        self.assertFalse(f.value.permanent)

    def test_address_literal(self):
        """
        An address-literal domain needs no DNS.
        """
        hosts = self.successResultOf(self.route({}, domain="[192.0.2.5]"))
        self.assertEqual(hosts, [RouteHost("[192.0.2.5]", ("192.0.2.5",), 2525)])


class SmarthostRouterTests(SynchronousTestCase):
    def test_ip(self):
        router = SmarthostRouter("127.0.0.1", 587)
        self.assertEqual(self.successResultOf(router.route("anything.test")),
                         [RouteHost("127.0.0.1", ("127.0.0.1",), 587)])

    def test_name_resolved(self):
        router = SmarthostRouter("relay.example.net", 587,
                                 FakeDNS({("relay.example.net", dns.A): [a("192.0.2.4")]}))
        self.assertEqual(self.successResultOf(router.route("x.test")),
                         [RouteHost("relay.example.net", ("192.0.2.4",), 587)])

    def test_lookup_failure_temporary(self):
        """
        A smarthost whose name does not resolve defers, never bounces.
        """
        router = SmarthostRouter("relay.example.net", 587, FakeDNS({}))
        f = self.failureResultOf(router.route("x.test"), RoutingError)
        self.assertFalse(f.value.permanent)
        self.assertEqual(f.value.status, "4.4.3")
