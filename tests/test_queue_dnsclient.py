# -*- test-case-name: tests.test_queue_dnsclient -*-
"""
Tests for L{mailappliance.queue.dnsclient}: real queries on the real
reactor to a DNS server in this process, on 127.0.0.1, with every log event
captured.
"""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import client, dns, server
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailappliance.queue.dnsclient import QuietResolver
from mailappliance.service import make_dns_resolver


class _Zone:
    """
    Answers every MX query with C{10 mx.remote.test}.
    """

    def query(self, query, timeout=None):
        record = dns.Record_MX(10, b"mx.remote.test", ttl=60)
        answer = dns.RRHeader(name=query.name.name, type=dns.MX, ttl=60, payload=record, auth=True)
        return defer.succeed(([answer], [], []))


class QuietResolverTests(TestCase):
    def setUp(self):
        factory = server.DNSServerFactory(clients=[_Zone()])
        factory.noisy = False
        protocol = dns.DNSDatagramProtocol(factory)
        protocol.noisy = False
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.server = ("127.0.0.1", port.getHost().port)

    @defer.inlineCallbacks
    def logged_lookup(self, resolver):
        """
        Look up the MX of C{remote.test} with C{resolver} and let the
        query's port close.

        @return: a L{Deferred} firing with the answer's exchanges and the
            text of every event logged meanwhile.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            answers, _, _ = yield resolver.lookupMailExchange("remote.test")
            # The query's port closes in a call the reactor runs next.
            yield task.deferLater(reactor, 0, lambda: None)
        finally:
            globalLogPublisher.removeObserver(events.append)
        return [str(a.payload.name) for a in answers], [formatEvent(e) for e in events]

    @defer.inlineCallbacks
    def test_twisted_resolver_logs_four_lines(self):
        """
        The premise: Twisted's own resolver logs four lines per query
        (protocol and port, each starting and stopping).
        """
        exchanges, lines = yield self.logged_lookup(client.Resolver(servers=[self.server], reactor=reactor))
        self.assertEqual(exchanges, ["mx.remote.test"])
        self.assertEqual(len(lines), 4, lines)
        self.assertTrue(lines[0].startswith("DNSDatagramProtocol starting on "), lines)
        self.assertTrue(lines[1].startswith("Starting protocol <twisted.names.dns.DNSDatagramProtocol"), lines)
        self.assertRegex(lines[2], r"^\(UDP Port \d+ Closed\)$")
        self.assertTrue(lines[3].startswith("Stopping protocol <twisted.names.dns.DNSDatagramProtocol"), lines)

    @defer.inlineCallbacks
    def test_query_logs_nothing(self):
        """
        A query through L{QuietResolver} gets its answer and logs nothing.
        """
        exchanges, lines = yield self.logged_lookup(QuietResolver(servers=[self.server], reactor=reactor))
        self.assertEqual(exchanges, ["mx.remote.test"])
        self.assertEqual(lines, [])

    @defer.inlineCallbacks
    def test_relay_resolver_logs_nothing(self):
        """
        The relay's resolver chain (L{make_dns_resolver}: hosts file,
        cache, our client) logs nothing for a query either.
        """
        exchanges, lines = yield self.logged_lookup(make_dns_resolver([self.server], reactor))
        self.assertEqual(exchanges, ["mx.remote.test"])
        self.assertEqual(lines, [])

    def test_random_source_port_per_query(self):
        """
        Each query still gets its own port (RFC 5452 section 9.2), closed
        after the answer.
        """
        resolver = QuietResolver(servers=[self.server], reactor=reactor)
        first, second = resolver._connectedProtocol(), resolver._connectedProtocol()
        self.addCleanup(first.transport.stopListening)
        self.addCleanup(second.transport.stopListening)
        self.assertFalse(first.noisy)
        self.assertNotEqual(first.transport.getHost().port, second.transport.getHost().port)


class _UDPReactor(Clock):
    """
    A reactor with time and a C{listenUDP} that records its calls, as a
    reactor that is not Twisted's POSIX one would be.
    """

    def __init__(self) -> None:
        super().__init__()
        self.listened: list[tuple[int, object, str]] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.listened.append((port, protocol, interface))


class OtherReactorTests(SynchronousTestCase):
    def test_other_reactor(self):
        """
        On a reactor without Twisted's POSIX ports, the reactor's own
        C{listenUDP} is used, with a quiet protocol.
        """
        other = _UDPReactor()
        protocol = QuietResolver(servers=[("192.0.2.53", 53)], reactor=other)._connectedProtocol("::")
        [(port, listening, interface)] = other.listened
        self.assertIs(listening, protocol)
        self.assertEqual(interface, "::")
        self.assertFalse(protocol.noisy)
