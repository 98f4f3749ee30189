"""
POP3 over real TLS, in memory: STLS (RFC 2595) and implicit TLS (RFC 8314)
between the server and a small client, with
L{twisted.test.iosim.connectedServerAndClient} and a transport whose
startTLS inserts a real L{TLSMemoryBIOProtocol}, as the TCP transport does.
"""

from __future__ import annotations

from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides, implementer

from mailappliance.testing import write_certificate
from mailappliance.tls import (
    ServerTLS,
    wrap_implicit_tls,
)
from tests.test_pop3_server import (
    ALICE,
    CAPA_PLAIN,
    CAPA_STLS,
    LOGGED_IN,
    MSG1,
    UNTRUSTED,
    Harness,
)


class _Bypass:
    """
    What the TLS layer writes through: the raw transport underneath.
    """

    def __init__(self, transport: FakeTransport):
        self._transport = transport

    def write(self, data):
        self._transport.write_raw(data)

    def writeSequence(self, data):
        self._transport.write_raw(b"".join(data))

    def loseConnection(self):
        FakeTransport.loseConnection(self._transport)

    def registerProducer(self, producer, streaming):
        FakeTransport.registerProducer(self._transport, producer, streaming)

    def unregisterProducer(self):
        FakeTransport.unregisterProducer(self._transport)

    def __getattr__(self, name):
        return getattr(self._transport, name)


@implementer(ITLSTransport)
class MemoryTLSTransport(FakeTransport):
    """
    An iosim transport whose startTLS is real: it puts a
    L{TLSMemoryBIOProtocol} between the bytes and the application
    protocol, the way L{twisted.internet._newtls.startTLS} does.

    @ivar raw: every byte put on the wire.
    """

    def __init__(self, protocol, isServer, clock, peerAddress=None):
        super().__init__(protocol, isServer, peerAddress=peerAddress)
        self._clock = clock
        self._tls = None
        self.raw = bytearray()

    def write_raw(self, data):
        self.raw += data
        FakeTransport.write(self, data)

    def startTLS(self, contextFactory, beNormal=True):
        factory = TLSMemoryBIOFactory(contextFactory, not self.isServer, None, clock=self._clock)
        self._tls = factory.protocol(factory, self.protocol, False)
        self.protocol = self._tls
        self._tls.makeConnection(_Bypass(self))
        directlyProvides(self, ISSLTransport, ITLSTransport)

    def write(self, data):
        if self._tls is not None:
            self._tls.write(data)
        else:
            self.write_raw(data)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def registerProducer(self, producer, streaming):
        if self._tls is not None:
            self._tls.registerProducer(producer, streaming)
        else:
            super().registerProducer(producer, streaming)

    def unregisterProducer(self):
        if self._tls is not None:
            self._tls.unregisterProducer()
        else:
            super().unregisterProducer()


class RecordingClient(Protocol):
    """
    A client that records what it receives and starts TLS when the server
    says "+OK Begin TLS negotiation".
    """

    def __init__(self, client_tls=None):
        self.client_tls = client_tls
        self.received = b""
        self.tls_started = False

    def dataReceived(self, data):
        self.received += data
        if self.client_tls is not None and not self.tls_started and b"+OK Begin TLS negotiation\r\n" in self.received:
            self.tls_started = True
            self.transport.startTLS(self.client_tls)

    def take(self) -> bytes:
        data, self.received = self.received, b""
        return data


class TLSTestsMixin:
    def make_certificates(self):
        directory = self.mktemp()
        cert_path, key_path = write_certificate(directory, "localhost")
        with open(cert_path, "rb") as f:
            self.cert_pem = f.read()
        self.server_tls = ServerTLS.from_files(cert_path, key_path)
        self.client_tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(self.cert_pem))


class STLSTests(TLSTestsMixin, SynchronousTestCase):
    def setUp(self):
        self.make_certificates()
        self.h = Harness(self, tls=self.server_tls)
        self.h.standard_mailbox()
        clock = self.h.clock
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: self.h.factory.buildProtocol(UNTRUSTED),
            lambda: RecordingClient(self.client_tls),
            clientTransportFactory=lambda p: MemoryTLSTransport(p, False, clock),
            serverTransportFactory=lambda p: MemoryTLSTransport(p, True, clock, peerAddress=UNTRUSTED),
            clock=clock,
        )

    def exchange(self, data: bytes) -> bytes:
        self.client.transport.write(data)
        self.pump.flush()
        return self.client.take()

    def test_stls_then_login(self):
        """
        Before STLS an untrusted client may not log in and is offered STLS;
        after the handshake (with our certificate) CAPA no longer offers
        it, and the login works and is logged with tls=yes.
        """
        self.assertEqual(self.client.take(), b"+OK mail.example.test POP3 ready\r\n")
        self.assertEqual(self.exchange(b"CAPA\r\n"), CAPA_STLS)
        self.assertEqual(
            self.exchange(b"USER alice@example.test\r\n"), b"-ERR [AUTH] Plaintext login requires STLS\r\n"
        )
        self.assertEqual(self.exchange(b"STLS\r\n"), b"+OK Begin TLS negotiation\r\n")
        self.assertTrue(self.client.tls_started)
        self.assertTrue(ISSLTransport.providedBy(self.server.transport))
        self.assertEqual(self.exchange(b"CAPA\r\n"), CAPA_PLAIN)
        self.assertEqual(
            self.exchange(b"USER alice@example.test\r\nPASS correct horse\r\nRETR 1\r\n"),
            b"+OK Send your password\r\n" + LOGGED_IN + b"+OK 28 octets\r\n" + MSG1 + b".\r\n",
        )
        wire = bytes(self.server.transport.raw)
        self.assertIn(b"+OK Begin TLS negotiation\r\n", wire)
        self.assertNotIn(b"Send your password", wire)
        self.assertNotIn(b"correct horse", bytes(self.client.transport.raw))
        self.assertIn(self.client.transport._tls.getHandle().get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))
        peer = Certificate.peerFromTransport(self.client.transport._tls)
        self.assertEqual(peer.dumpPEM(), Certificate.loadPEM(self.cert_pem).dumpPEM())
        self.assertIn("tls=yes", next(line for line in self.h.log_lines() if "status=ok" in line))

    def test_plaintext_after_stls_discarded(self):
        """
        Commands injected in plaintext right behind STLS (the
        CVE-2011-0411 pattern) are dropped: no reply to them ever comes,
        and they do not log in or change the session.
        """
        self.client.take()
        injected = b"STLS\r\nUSER alice@example.test\r\nPASS correct horse\r\nDELE 1\r\nQUIT\r\n"
        self.assertEqual(self.exchange(injected), b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(self.h.checker.seen, [])
        self.assertEqual(self.exchange(b"PASS correct horse\r\n"), b"-ERR Send USER first\r\n")
        self.assertEqual(self.exchange(b"NOOP\r\n"), b"-ERR Not logged in\r\n")
        self.assertFalse(self.server.transport.disconnecting)


class ImplicitTLSTests(TLSTestsMixin, SynchronousTestCase):
    def test_implicit_tls_session(self):
        """
        Through L{wrap_implicit_tls}, the session is encrypted from the
        first byte: the greeting arrives over TLS, STLS is not offered, a
        plaintext login from an untrusted peer is allowed, and RETR streams
        through the TLS layer.
        """
        self.make_certificates()
        h = Harness(self, tls=self.server_tls)
        h.standard_mailbox()
        wrapped = wrap_implicit_tls(h.factory, self.server_tls, clock=h.clock)
        client_factory = TLSMemoryBIOFactory(self.client_tls, True, Factory.forProtocol(RecordingClient), clock=h.clock)
        client, server, pump = connectedServerAndClient(
            lambda: wrapped.buildProtocol(UNTRUSTED),
            lambda: client_factory.buildProtocol(None),
            clientTransportFactory=lambda p: MemoryTLSTransport(p, False, h.clock),
            serverTransportFactory=lambda p: MemoryTLSTransport(p, True, h.clock),
            clock=h.clock,
        )
        app = client.wrappedProtocol
        self.assertEqual(app.take(), b"+OK mail.example.test POP3 ready\r\n")
        client.write(b"CAPA\r\nSTLS\r\nUSER alice@example.test\r\nPASS correct horse\r\nRETR 1\r\nQUIT\r\n")
        pump.flush()
        self.assertEqual(
            app.take(),
            CAPA_PLAIN
            + b"-ERR TLS is already active\r\n+OK Send your password\r\n"
            + LOGGED_IN
            + b"+OK 28 octets\r\n"
            + MSG1
            + b".\r\n+OK Bye\r\n",
        )
        self.assertEqual(h.listing(ALICE)["cur"][0], "1000.M1P1Q1.host,S=28,W=28:2,S")
        self.assertNotIn(b"POP3 ready", bytes(server.transport.raw))
        self.assertNotIn(b"correct horse", bytes(client.transport.raw))
