# -*- test-case-name: tests.test_queue_routing -*-
"""
Where to deliver mail for a remote domain: MX lookup (RFC 5321 section
5.1) through C{twisted.names}, or the smarthost.

For a domain, L{MXRouter.route} returns the hosts to try, in order:

  - the MX records sorted by preference, hosts of equal preference shuffled
    (RFC 5321 5.1: "randomized to spread the load");
  - no MX records (the name exists): the domain itself, its A/AAAA records
    ("implicit MX");
  - a domain that does not exist (NXDOMAIN): a permanent L{RoutingError},
    status 5.1.2; a null MX (RFC 7505: one MX, preference 0, exchange
    "."): a permanent L{RoutingError}, status 5.1.10;
  - a server failure or time-out: a temporary L{RoutingError} (4.4.3);
  - MX records that name our own host: it and those less preferred are
    dropped; if it was the best, a permanent L{RoutingError} (5.4.6, the
    mail would loop back to us).

Each host comes with its addresses (A and AAAA, looked up with the same
resolver, so that C{dns_servers} in the configuration governs everything;
the reactor's own resolver is not used). A host without addresses is
skipped; if no host has any, the route fails temporarily (4.4.3), since a
missing address record is more often a transient DNS problem than a
permanent one.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.names import dns, error

MAX_MX_HOSTS = 10
# RFC 7505 section 6 registers X.1.10, "Recipient address has null MX".
NULL_MX_STATUS = "5.1.10"


class RoutingError(Exception):
    """
    No route to a domain.

    @ivar permanent: L{True} when retrying cannot help (NXDOMAIN, null MX).
    @ivar status: the enhanced status code for the DSN.
    """

    def __init__(self, reason: str, permanent: bool, status: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.status = status


@dataclass(frozen=True)
class RouteHost:
    """
    One host to try.

    @ivar name: its name (for logs and TLS host name checks).
    @ivar addresses: IP addresses, IPv4 first then IPv6.
    @ivar port: the TCP port.
    """

    name: str
    addresses: tuple[str, ...]
    port: int


class MXRouter:
    """
    Routes by MX lookup.

    @param resolver: an L{twisted.internet.interfaces.IResolver} (a
        C{twisted.names.client.Resolver} on C{dns_servers}, or a fake).
    @param port: the port to connect to (C{mx_port}).
    @param hostname: our own name (C{[server] hostname}): an MX record
        naming it, and those less preferred, are dropped (RFC 5321 section
        5.1), and a domain whose best MX is ourselves fails at once (5.4.6:
        the mail would loop back to us), as Postfix does.
    """

    def __init__(self, resolver, port: int = 25, rng: random.Random | None = None,
                 hostname: str | None = None) -> None:
        self._resolver = resolver
        self._port = port
        self._random = rng or random.Random()
        self._own = _host_key(hostname) if hostname else None

    @defer.inlineCallbacks
    def route(self, domain: str):
        """
        @return: a L{Deferred} firing with a non-empty list of L{RouteHost},
            or failing with L{RoutingError}.
        """
        literal = _address_literal(domain)
        if literal is not None:
            return [RouteHost(domain, (literal,), self._port)]
        try:
            answers, _, _ = yield self._resolver.lookupMailExchange(domain)
        except error.DNSNameError:
            raise RoutingError(f"domain {domain} does not exist", True, "5.1.2")
        except Exception as e:
            raise RoutingError(f"MX lookup for {domain} failed: {_describe(e)}", False, "4.4.3")
        exchanges = _mx_records(answers, domain)
        if len(exchanges) == 1 and exchanges[0][1] in ("", "."):
            # RFC 7505 section 4.1: no delivery is attempted; fail at once.
            raise RoutingError(f"domain {domain} accepts no mail (null MX, RFC 7505)", True, NULL_MX_STATUS)
        if self._own is not None and any(_host_key(name) == self._own for _, name in exchanges):
            ours = min(preference for preference, name in exchanges if _host_key(name) == self._own)
            exchanges = [(preference, name) for preference, name in exchanges if preference < ours]
            if not exchanges:
                raise RoutingError(f"mail for {domain} loops back to myself (its best MX is {self._own})", True,
                                   "5.4.6")
        if not exchanges:
            names = [domain]
        else:
            names = self._order(exchanges)
        hosts = []
        last_problem = None
        for name in names[:MAX_MX_HOSTS]:
            if name in ("", "."):
                continue
            try:
                addresses = yield self._addresses(name)
            except RoutingError as e:
                if e.permanent and not exchanges:
                    raise
                last_problem = e
                continue
            if addresses:
                hosts.append(RouteHost(name, addresses, self._port))
        if not hosts:
            reason = last_problem.reason if last_problem else f"no address records for the mail hosts of {domain}"
            raise RoutingError(reason, False, "4.4.3")
        return hosts

    def _order(self, exchanges: list[tuple[int, str]]) -> list[str]:
        by_preference: dict[int, list[str]] = {}
        for preference, name in exchanges:
            by_preference.setdefault(preference, []).append(name)
        ordered = []
        for preference in sorted(by_preference):
            group = list(dict.fromkeys(by_preference[preference]))
            self._random.shuffle(group)
            ordered += [n for n in group if n not in ordered]
        return ordered

    @defer.inlineCallbacks
    def _addresses(self, name: str):
        literal = _address_literal(name)
        if literal is not None:
            return (literal,)
        results = yield defer.DeferredList(
            [self._resolver.lookupAddress(name), self._resolver.lookupIPV6Address(name)],
            consumeErrors=True,
        )
        addresses: list[str] = []
        failures = []
        for success, value in results:
            if not success:
                failures.append(value.value)
                continue
            answers = value[0]
            for record in answers:
                if record.type == dns.A:
                    addresses.append(record.payload.dottedQuad())
                elif record.type == dns.AAAA:
                    addresses.append(
                        str(ipaddress.IPv6Address(record.payload.address))
                    )
        if not addresses and failures:
            if all(isinstance(f, error.DNSNameError) for f in failures):
                raise RoutingError(f"host {name} does not exist", True, "5.1.2")
            raise RoutingError(f"address lookup for {name} failed: {_describe(failures[0])}", False, "4.4.3")
        return tuple(dict.fromkeys(addresses))


class SmarthostRouter:
    """
    Routes everything to one host. Failing to find its address is always
    temporary: a smarthost that cannot be resolved is a local problem (DNS
    or configuration), never a reason to bounce mail.
    """

    def __init__(self, host: str, port: int, resolver=None) -> None:
        self._host = host
        self._port = port
        self._mx = MXRouter(resolver, port) if resolver is not None else None

    @defer.inlineCallbacks
    def route(self, domain: str):
        literal = _address_literal(self._host) or (self._host if _is_ip(self._host) else None)
        if literal is not None:
            return [RouteHost(self._host, (literal,), self._port)]
        if self._mx is None:
            return [RouteHost(self._host, (), self._port)]
        try:
            addresses = yield self._mx._addresses(self._host)
        except RoutingError as e:
            raise RoutingError(f"smarthost: {e.reason}", False, "4.4.3")
        if not addresses:
            raise RoutingError(f"smarthost {self._host} has no address", False, "4.4.3")
        return [RouteHost(self._host, addresses, self._port)]


def _host_key(name: str) -> str:
    return name.rstrip(".").lower()


def _mx_records(answers, domain: str) -> list[tuple[int, str]]:
    found = []
    for record in answers:
        if record.type == dns.MX:
            found.append((record.payload.preference, str(record.payload.name).rstrip(".").lower()))
    return found


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _address_literal(domain: str) -> str | None:
    """
    The IP address of an address literal domain (C{[192.0.2.1]},
    C{[IPv6:...]}), else L{None}.
    """
    if not domain.startswith("["):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    return inner if _is_ip(inner) else None


def _describe(e: BaseException) -> str:
    if isinstance(e, error.DNSServerError):
        return "server failure (SERVFAIL)"
    if isinstance(e, (defer.TimeoutError, error.DNSQueryTimeoutError)):
        return "time-out"
    if isinstance(e, error.DNSQueryRefusedError):
        return "query refused"
    if isinstance(e, DNSLookupError):
        return "lookup error"
    return f"{type(e).__name__}: {e}"
