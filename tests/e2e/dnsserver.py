# -*- test-case-name: tests.e2e.test_dnsserver,tests.e2e.test_relay -*-
"""
A tiny authoritative DNS server for end-to-end tests, on loopback:

    python -m tests.e2e.dnsserver ZONE.json

ZONE.json maps names to record sets::

    {"remote.test": {"MX": [[10, "mx.remote.test"]]},
     "mx.remote.test": {"A": ["127.0.0.1"]},
     "nomx.test": {"A": ["127.0.0.1"]},
     "servfail.test": "SERVFAIL"}

A name not in the zone is NXDOMAIN (rcode 3); a name without the asked
type has no answer (NODATA); C{"SERVFAIL"} answers every query for the name
with a server failure (rcode 2). It listens on UDP and TCP on 127.0.0.1 (a
free port, the same for both) and prints C{READY <port>} once it does.
"""

import json
import sys

from twisted.internet import defer, reactor
from twisted.names import dns, error, server


class ServerFailure(Exception):
    """
    The zone says this name fails. Deliberately not a L{dns.DomainError}:
    L{server.DNSServerFactory} answers those (L{error.DNSServerError}
    included) with NXDOMAIN, and anything else with SERVFAIL.
    """


class ZoneServerFactory(server.DNSServerFactory):
    """
    A L{server.DNSServerFactory} that answers a L{ServerFailure} with
    SERVFAIL without logging it as an error (it is what the zone asks for).
    """

    def gotResolverError(self, failure, protocol, message, address):
        if failure.check(ServerFailure):
            response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
            self.sendReply(protocol, response, address)
            return
        super().gotResolverError(failure, protocol, message, address)


class ZoneResolver:
    def __init__(self, zone):
        self.zone = {name.lower().rstrip("."): records for name, records in zone.items()}

    def query(self, query, timeout=None):
        name = query.name.name.decode("ascii").lower().rstrip(".")
        records = self.zone.get(name)
        if records is None:
            return defer.fail(error.DNSNameError(name))
        if records == "SERVFAIL":
            return defer.fail(ServerFailure(name))
        answers = []
        kind = dns.QUERY_TYPES.get(query.type, "")
        for value in records.get(kind, []):
            if kind == "MX":
                payload = dns.Record_MX(value[0], value[1].encode(), ttl=60)
            elif kind == "A":
                payload = dns.Record_A(value, ttl=60)
            elif kind == "AAAA":
                payload = dns.Record_AAAA(value, ttl=60)
            else:
                continue
            answers.append(dns.RRHeader(name=query.name.name, type=query.type, ttl=60, payload=payload, auth=True))
        return defer.succeed((answers, [], []))


def main(path):
    with open(path) as f:
        zone = json.load(f)
    factory = ZoneServerFactory(clients=[ZoneResolver(zone)])
    protocol = dns.DNSDatagramProtocol(factory)
    tcp = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port = tcp.getHost().port
    reactor.listenUDP(port, protocol, interface="127.0.0.1")
    print(f"READY {port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
