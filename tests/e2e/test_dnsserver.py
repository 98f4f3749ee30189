# -*- test-case-name: tests.e2e.test_dnsserver -*-
"""
The end-to-end DNS helper itself (L{tests.e2e.dnsserver}): the rcodes it
answers on the wire, read back by C{twisted.names.client} as the product
reads them. Runs in this process, on 127.0.0.1 only.
"""

from twisted.internet import defer, reactor
from twisted.names import client, dns, error
from twisted.trial.unittest import TestCase

from tests.e2e.dnsserver import ZoneResolver, ZoneServerFactory

ZONE = {
    "remote.test": {"MX": [[10, "mx.remote.test"]]},
    "servfail.test": "SERVFAIL",
}


class ZoneServerTests(TestCase):
    def setUp(self):
        factory = ZoneServerFactory(clients=[ZoneResolver(ZONE)])
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.resolver = client.Resolver(servers=[("127.0.0.1", port.getHost().port)], reactor=reactor)

    def rcode(self, name, kind=dns.MX):
        """
        @return: a L{Deferred} firing with the rcode of the answer to a
            query for C{name}.
        """
        d = self.resolver.queryUDP([dns.Query(name, kind)], timeout=(5,))
        return d.addCallback(lambda message: message.rCode)

    @defer.inlineCallbacks
    def test_servfail(self):
        """
        A C{"SERVFAIL"} entry is answered with rcode 2 (SERVFAIL), which the
        client reports as L{error.DNSServerError}, not as a name that does
        not exist.
        """
        self.assertEqual((yield self.rcode("servfail.test")), dns.ESERVER)
        yield self.assertFailure(self.resolver.lookupMailExchange("servfail.test"), error.DNSServerError)

    @defer.inlineCallbacks
    def test_nxdomain(self):
        """
        A name not in the zone is answered with rcode 3 (NXDOMAIN).
        """
        self.assertEqual((yield self.rcode("nowhere.test")), dns.ENAME)
        yield self.assertFailure(self.resolver.lookupMailExchange("nowhere.test"), error.DNSNameError)

    @defer.inlineCallbacks
    def test_answer(self):
        """
        A name in the zone gets its records.
        """
        answers, _, _ = yield self.resolver.lookupMailExchange("remote.test")
        self.assertEqual([(a.payload.preference, str(a.payload.name)) for a in answers], [(10, "mx.remote.test")])
