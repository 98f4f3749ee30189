# -*- test-case-name: tests.test_testing -*-
"""
In-memory connections with real TLS: L{connect_pending} joins a
connection attempt made on a L{MemoryReactorClock} to a server factory
over transports whose STARTTLS runs real TLS; L{refuse_pending} fails
such an attempt.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import ISSLTransport, ITransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import alsoProvides, implementer


@implementer(ITransport)
class _BelowTLS:
    """
    What the TLS layer of a L{TLSFakeTransport} writes to: the raw stream.
    """

    def __init__(self, transport: TLSFakeTransport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        FakeTransport.write(self._transport, data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        FakeTransport.loseConnection(self._transport)

    def abortConnection(self) -> None:
        FakeTransport.abortConnection(self._transport)

    def registerProducer(self, producer, streaming) -> None:
        FakeTransport.registerProducer(self._transport, producer, streaming)

    def unregisterProducer(self) -> None:
        FakeTransport.unregisterProducer(self._transport)

    def getPeer(self):
        return self._transport.getPeer()

    def getHost(self):
        return self._transport.getHost()


class TLSFakeTransport(FakeTransport):
    """
    An L{iosim} transport whose C{startTLS} does what a TCP transport's
    does: put a real TLS layer (OpenSSL memory BIOs) between the bytes and
    the protocol, so certificates are really checked. (Plain L{iosim}
    only pretends.)

    @param clock: the L{IReactorTime} on which the TLS layer schedules the
        flushing of small writes (the pump's clock).
    """

    _tls_layer = None

    def __init__(self, protocol, isServer, hostAddress=None, peerAddress=None, clock=None) -> None:
        super().__init__(protocol, isServer, hostAddress, peerAddress)
        self._clock = clock

    def startTLS(self, contextFactory, beNormal: bool = True) -> None:
        client = (not self.isServer) if beNormal else self.isServer
        factory = TLSMemoryBIOFactory(contextFactory, client, None, clock=self._clock)
        layer = factory.protocol(factory, self.protocol, False)
        self.protocol = layer
        self._tls_layer = layer
        self.getHandle = layer.getHandle
        self.getPeerCertificate = layer.getPeerCertificate
        alsoProvides(self, ISSLTransport)
        layer.makeConnection(_BelowTLS(self))

    def write(self, data: bytes) -> None:
        if self._tls_layer is not None:
            if not self.disconnecting:
                self._tls_layer.write(data)
        else:
            FakeTransport.write(self, data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self._tls_layer is not None and not self.disconnecting:
            self._tls_layer.loseConnection()
        else:
            FakeTransport.loseConnection(self)

    def abortConnection(self) -> None:
        if self._tls_layer is not None and not self.disconnecting:
            self._tls_layer.abortConnection()
        else:
            FakeTransport.abortConnection(self)

    def registerProducer(self, producer, streaming) -> None:
        if self._tls_layer is not None:
            self._tls_layer.registerProducer(producer, streaming)
        else:
            FakeTransport.registerProducer(self, producer, streaming)

    def unregisterProducer(self) -> None:
        if self._tls_layer is not None:
            self._tls_layer.unregisterProducer()
        else:
            FakeTransport.unregisterProducer(self)


def _address(host: str, port: int):
    try:
        if ipaddress.ip_address(host).version == 6:
            return IPv6Address("TCP", host, port)
    except ValueError:
        pass
    return IPv4Address("TCP", host, port)


def connect_pending(reactor, server_factory, index: int = 0) -> IOPump:
    """
    Complete a connection attempt made with C{connectTCP} on a
    L{MemoryReactor} (endpoints do that), to a protocol built by
    C{server_factory}, over L{TLSFakeTransport}s.

    @param index: which pending attempt (0: the oldest).
    @return: an L{IOPump} whose C{flush} moves the bytes (and turns
        C{reactor}'s clock by nothing, running due calls).
    """
    host, port, factory, _, _ = reactor.tcpClients.pop(index)
    reactor.connectors.pop(index)
    server_address = _address(host, port)
    client_address = _address("::1" if isinstance(server_address, IPv6Address) else "127.0.0.1", 40000)
    client = factory.buildProtocol(server_address)
    server = server_factory.buildProtocol(client_address)
    client_transport = TLSFakeTransport(client, False, client_address, server_address, clock=reactor)
    server_transport = TLSFakeTransport(server, True, server_address, client_address, clock=reactor)
    return connect(server, server_transport, client, client_transport, greet=False, clock=reactor)


def refuse_pending(reactor, index: int = 0, reason: Exception | None = None) -> None:
    """
    Fail a connection attempt made on a L{MemoryReactor}.

    @param reason: the exception; by default L{ConnectionRefusedError}.
    """
    _, _, factory, _, _ = reactor.tcpClients.pop(index)
    connector = reactor.connectors.pop(index)
    factory.clientConnectionFailed(connector, Failure(reason or ConnectionRefusedError()))
