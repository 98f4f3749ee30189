# -*- test-case-name: tests.test_queue_dnsclient -*-
"""
The DNS client of the relay: C{twisted.names.client.Resolver}, without the
four lines Twisted logs for every query.

Twisted's resolver sends each UDP query from a new port with a random
number (RFC 5452 section 9.2: a spoofed answer must guess the port as well
as the query id), and both the protocol and the port announce themselves:
C{DNSDatagramProtocol starting on N}, C{Starting protocol ...}, C{(UDP Port
N Closed)}, C{Stopping protocol ...}. On a relay that looks up MX and
address records for every message, these outnumber the product's own log
lines, which are one key=value event each with the queue id (README,
"Reading the logs"). L{QuietResolver} keeps the random port per query and
drops those four lines, on its own protocols and ports only: nothing of
Twisted is changed for anyone else.
"""

from __future__ import annotations

import errno

from twisted.internet import base, udp
from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.names import client, dns

# As Twisted's resolver: give up on finding a free random source port
# after this many tries (some numbers are in use or privileged).
MAX_SOURCE_PORT_ATTEMPTS = 1000


class QuietUDPPort(udp.Port):
    """
    A L{udp.Port} that does not log when it starts and stops.

    L{udp.Port} logs C{"<protocol> starting on <port>"} and C{"(UDP Port
    <port> Closed)"} whatever the protocol's C{noisy} says, so the two
    methods that do are repeated here, as they are in Twisted 26.10, without
    their log lines. (A changed L{udp.Port} shows up in
    L{tests.test_queue_dnsclient}, which runs a real query.)
    """

    def _bindSocket(self) -> None:
        try:
            skt = self.createInternetSocket()
            skt.bind((self.interface, self.port))
        except OSError as e:
            raise CannotListenError(self.interface, self.port, e) from e
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = skt.fileno

    def connectionLost(self, reason=None) -> None:
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d


class QuietResolver(client.Resolver):
    """
    A L{client.Resolver} whose per-query UDP protocols (C{noisy} off) and
    ports (L{QuietUDPPort}) log nothing when they start and stop. Its
    arguments are those of L{client.Resolver}.

    On a reactor that is not a L{PosixReactorBase} (a test's memory
    reactor, Windows' IOCP), the port is the reactor's own C{listenUDP},
    so only the protocol is quiet.
    """

    def _connectedProtocol(self, interface: str = "") -> dns.DNSDatagramProtocol:
        """
        A new, quiet L{dns.DNSDatagramProtocol} listening on a random port,
        as L{client.Resolver._connectedProtocol} makes it.
        """
        protocol = dns.DNSDatagramProtocol(self, reactor=self._reactor)
        protocol.noisy = False
        attempts = 0
        while True:
            attempts += 1
            try:
                self._listen(dns.randomSource(), protocol, interface)
            except CannotListenError as e:
                out_of_files = getattr(e.socketError, "errno", None) == errno.EMFILE
                if out_of_files or attempts >= MAX_SOURCE_PORT_ATTEMPTS:
                    raise
            else:
                return protocol

    def _listen(self, port: int, protocol, interface: str) -> None:
        if isinstance(self._reactor, PosixReactorBase):
            QuietUDPPort(port, protocol, interface, reactor=self._reactor).startListening()
        else:
            self._reactor.listenUDP(port, protocol, interface=interface)
