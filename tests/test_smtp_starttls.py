"""
Tests for L{mailappliance.smtp.starttls}: STARTTLS (RFC 3207) over a
transport that records C{startTLS}, and over real TLS in memory
(L{twisted.test.iosim.connectedServerAndClient} with a transport whose
C{startTLS} inserts a real L{TLSMemoryBIOProtocol}, as the TCP transport
does), for STARTTLS and for implicit-TLS listeners (RFC 8314).
"""

from __future__ import annotations

import base64
import re

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides, implementer

from mailappliance.smtp.policy import SMTPSettings
from mailappliance.smtp.starttls import can_start_tls, tls_active, tls_description
from mailappliance.testing import (
    FakeChecker,
    SMTPHarness,
    TLSCapableTransport,
    write_certificate,
)
from mailappliance.tls import ServerTLS, wrap_implicit_tls
from tests.test_smtp_server import EHLO, HOST, RCPT_OK, SENDER_OK, START, lines

TLS_CONTEXT = object()
READY = "220 2.0.0 Ready to start TLS"
EHLO_STARTTLS = EHLO[:-1] + ("250-CHUNKING", "250 STARTTLS")
UNTRUSTED = IPv4Address("TCP", "192.0.2.1", 40000)
SUBMISSION = SMTPSettings(hostname=HOST, service="submission")
PASSWORDS = {"alice@example.test": b"correct horse"}


def plain(user: bytes, password: bytes) -> bytes:
    return base64.b64encode(b"\0" + user + b"\0" + password)


def tls_session(**harness: object) -> SMTPHarness:
    return SMTPHarness(tls=TLS_CONTEXT, transport_class=TLSCapableTransport, **harness)  # type: ignore[arg-type]


class TransportTests(SynchronousTestCase):
    def test_tls_active(self) -> None:
        """
        A transport is encrypted when it provides L{ISSLTransport} (TCP
        after C{startTLS}) or is the TLS layer of an implicit-TLS listener
        (a L{TLSMemoryBIOProtocol}).
        """
        plain_transport = StringTransport()
        self.assertFalse(tls_active(plain_transport))
        directlyProvides(plain_transport, ISSLTransport)
        self.assertTrue(tls_active(plain_transport))
        layer = TLSMemoryBIOFactory(CertificateOptions(), False, Factory.forProtocol(Protocol)).buildProtocol(None)
        self.assertTrue(tls_active(layer))
        self.assertFalse(can_start_tls(layer))

    def test_can_start_tls(self) -> None:
        """
        Only a transport providing L{ITLSTransport} and not encrypted yet
        can start TLS.
        """
        self.assertFalse(can_start_tls(StringTransport()))
        capable = TLSCapableTransport()
        self.assertTrue(can_start_tls(capable))
        capable.startTLS(TLS_CONTEXT)
        self.assertFalse(can_start_tls(capable))

    def test_description_without_handle(self) -> None:
        """
        Without an OpenSSL connection there is nothing to describe.
        """
        self.assertIsNone(tls_description(StringTransport()))
        self.assertIsNone(tls_description(TLSCapableTransport()))


class StartTLSDialogueTests(SynchronousTestCase):
    def test_advertised_only_when_possible(self) -> None:
        """
        STARTTLS is listed when a certificate is configured and the
        transport can start TLS; not without a certificate, not on a
        transport that cannot, and not once TLS is active.
        """
        self.assertEqual(tls_session().send(b"EHLO client.test\r\n"), lines(*EHLO_STARTTLS))
        self.assertEqual(SMTPHarness(tls=TLS_CONTEXT).send(b"EHLO client.test\r\n"), lines(*EHLO))
        no_certificate = SMTPHarness(transport_class=TLSCapableTransport)
        self.assertEqual(no_certificate.send(b"EHLO client.test\r\n"), lines(*EHLO))
        self.assertEqual(no_certificate.send(b"STARTTLS\r\n"), lines("502 5.5.1 Error: command not implemented"))
        session = tls_session()
        self.assertEqual(session.send(b"STARTTLS\r\n"), lines(READY))
        self.assertEqual(session.send(b"EHLO client.test\r\n"), lines(*EHLO))

    def test_ready_then_start(self) -> None:
        """
        The 220 goes out in plaintext before the switch, and the
        service's certificate object is handed to C{startTLS}.
        """
        session = tls_session()
        session.send(b"EHLO client.test\r\n")
        self.assertEqual(session.send(b"STARTTLS\r\n"), lines(READY))
        self.assertIs(session.transport.tls_context, TLS_CONTEXT)
        self.assertEqual(session.transport.written_before_tls, lines(READY))
        self.assertIn("service=smtp event=starttls peer=192.0.2.1 session=s1", session.log_lines())

    def test_refusals(self) -> None:
        """
        501 with an argument, 503 inside a transaction, 503 once TLS is
        active; none of them starts TLS.
        """
        session = tls_session()
        session.send(b"EHLO client.test\r\n")
        self.assertEqual(session.send(b"STARTTLS now\r\n"), lines("501 5.5.4 Syntax: STARTTLS"))
        self.assertEqual(
            session.send(b"MAIL FROM:<a@b.test>\r\nSTARTTLS\r\n"),
            lines(SENDER_OK, "503 5.5.1 Error: MAIL transaction in progress"),
        )
        self.assertIsNone(session.transport.tls_context)
        self.assertEqual(session.send(b"RSET\r\nSTARTTLS\r\n"), lines("250 2.0.0 Ok", READY))
        self.assertEqual(session.send(b"STARTTLS\r\n"), lines("503 5.5.1 Error: TLS already active"))

    def test_state_reset(self) -> None:
        """
        After STARTTLS the client must say EHLO again (RFC 3207 section
        4.2): MAIL is 503 until it does.
        """
        session = tls_session()
        session.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<a@b.test>\r\n"), lines("503 5.5.1 Error: send HELO/EHLO first"))
        self.assertEqual(session.send(b"EHLO client.test\r\n"), lines(*EHLO))

    def test_pipelined_plaintext_discarded(self) -> None:
        """
        Commands sent in plaintext behind STARTTLS in the same segment
        (CVE-2011-0411) are dropped unread: no reply to them, ever, and
        no effect (the MAIL opened no transaction).
        """
        session = tls_session()
        session.send(b"EHLO client.test\r\n")
        self.assertEqual(session.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<alice@example.test>\r\n"),
                         lines(READY))
        self.assertEqual(session.send(b"EHLO client.test\r\n"), lines(*EHLO))
        self.assertEqual(session.send(b"RCPT TO:<alice@example.test>\r\n"), lines("503 5.5.1 Error: need MAIL command"))
        self.assertEqual(session.resolver.asked, [])

    def test_authentication_forgotten(self) -> None:
        """
        A user authenticated before STARTTLS (from a trusted network) is
        forgotten by it: MAIL needs AUTH again.
        """
        session = tls_session(settings=SUBMISSION, peer="127.0.0.1", checker=FakeChecker(PASSWORDS))
        session.send(b"EHLO c\r\n")
        self.assertEqual(session.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n"),
                         lines("235 2.7.0 Authentication successful"))
        self.assertEqual(session.send(b"STARTTLS\r\n"), lines(READY))
        session.send(b"EHLO c\r\n")
        self.assertEqual(session.send(b"MAIL FROM:<alice@example.test>\r\n"),
                         lines("530 5.7.0 Authentication required"))

    def test_received_after_starttls(self) -> None:
        """
        Mail after STARTTLS is received C{with ESMTPS}.
        """
        session = tls_session()
        session.send(b"EHLO c\r\nSTARTTLS\r\n")
        session.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n.\r\n")
        self.assertIn(b" with ESMTPS id Q1", bytes(session.spool.writers[0].data))


class _Bypass:
    """
    What the TLS layer writes through: the raw transport underneath.
    """

    def __init__(self, transport: FakeTransport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        self._transport.write_raw(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._transport.write_raw(b"".join(data))

    def loseConnection(self) -> None:
        FakeTransport.loseConnection(self._transport)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


@implementer(ITLSTransport)
class MemoryTLSTransport(FakeTransport):
    """
    An iosim transport whose C{startTLS} is real: it puts a
    L{TLSMemoryBIOProtocol} between the bytes and the application
    protocol, and then offers its C{getHandle}, as
    L{twisted.internet._newtls.startTLS} does.

    @ivar raw: every byte put on the wire.
    """

    def __init__(self, protocol: Protocol, isServer: bool, clock: object, peerAddress: object = None) -> None:
        super().__init__(protocol, isServer, peerAddress=peerAddress)
        self._clock = clock
        self._tls = None
        self.raw = bytearray()

    def write_raw(self, data: bytes) -> None:
        self.raw += data
        FakeTransport.write(self, data)

    def startTLS(self, contextFactory: object, beNormal: bool = True) -> None:
        factory = TLSMemoryBIOFactory(contextFactory, not self.isServer, None, clock=self._clock)
        self._tls = factory.protocol(factory, self.protocol, False)
        self.protocol = self._tls
        self._tls.makeConnection(_Bypass(self))
        directlyProvides(self, ISSLTransport, ITLSTransport)

    def getHandle(self) -> object:
        return self._tls.getHandle() if self._tls is not None else None

    def write(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.write(data)
        else:
            self.write_raw(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))


class Client(Protocol):
    """
    A client that records what it receives and starts TLS once the server
    says it is ready.
    """

    def __init__(self, client_tls: object = None) -> None:
        self.client_tls = client_tls
        self.received = b""
        self.tls_started = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.client_tls is not None and not self.tls_started and (READY + "\r\n").encode() in self.received:
            self.tls_started = True
            self.transport.startTLS(self.client_tls)

    def take(self) -> bytes:
        data, self.received = self.received, b""
        return data


class RealTLSTestsMixin:
    def make_certificates(self) -> None:
        directory = self.mktemp()  # type: ignore[attr-defined]
        cert_path, key_path = write_certificate(directory, "localhost")
        with open(cert_path, "rb") as f:
            self.cert_pem = f.read()
        self.server_tls = ServerTLS.from_files(cert_path, key_path)
        self.client_tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(self.cert_pem))


# "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)", whatever was agreed.
TLS_CLAUSE = re.compile(rb"\r\n\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)\r\n")


class RealStartTLSTests(RealTLSTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.make_certificates()
        self.h = SMTPHarness(settings=SUBMISSION, tls=self.server_tls, checker=FakeChecker(PASSWORDS), connect=False)
        clock = self.h.clock
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: self.h.factory.buildProtocol(UNTRUSTED),
            lambda: Client(self.client_tls),
            clientTransportFactory=lambda p: MemoryTLSTransport(p, False, clock),
            serverTransportFactory=lambda p: MemoryTLSTransport(p, True, clock, peerAddress=UNTRUSTED),
            clock=clock,
        )

    def exchange(self, data: bytes) -> bytes:
        self.client.transport.write(data)
        self.pump.flush()
        return self.client.take()

    def test_starttls_auth_and_submission(self) -> None:
        """
        An untrusted client is offered STARTTLS but not AUTH; after the
        handshake it is offered AUTH (not STARTTLS), logs in, and submits
        a message whose C{Received:} records the TLS version and cipher
        and C{ESMTPSA}. Nothing after the 220 is readable on the wire.
        """
        self.assertEqual(self.client.take(), lines(f"220 2.0.0 {HOST} ESMTP mailappliance"))
        first = self.exchange(b"EHLO client.test\r\n")
        self.assertTrue(first.endswith(b"250-CHUNKING\r\n250 STARTTLS\r\n"), first)
        self.assertNotIn(b"AUTH", first)
        self.assertEqual(self.exchange(b"AUTH PLAIN\r\n"),
                         lines("538 5.7.11 Encryption required for requested authentication mechanism"))
        self.assertEqual(self.exchange(b"STARTTLS\r\n"), lines(READY))
        self.assertTrue(self.client.tls_started)
        self.assertTrue(ISSLTransport.providedBy(self.server.transport))
        second = self.exchange(b"EHLO client.test\r\n")
        self.assertIn(b"250 AUTH PLAIN LOGIN\r\n", second)
        self.assertNotIn(b"STARTTLS", second)
        self.assertEqual(
            self.exchange(
                b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n"
                b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                b"Subject: s\r\n\r\nbody\r\n.\r\n"
            ),
            lines("235 2.7.0 Authentication successful", SENDER_OK, RCPT_OK, START, "250 2.0.0 Ok: queued as Q1"),
        )
        data = bytes(self.h.spool.writers[0].data)
        self.assertTrue(data.startswith(b"Received: from client.test ([192.0.2.1])\r\n\t(using TLSv1."), data)
        self.assertRegex(data, TLS_CLAUSE)
        self.assertIn(b" with ESMTPSA id Q1", data)
        wire = bytes(self.server.transport.raw)
        self.assertIn(b"220 2.0.0 Ready to start TLS\r\n", wire)
        self.assertNotIn(b"Authentication successful", wire)
        self.assertNotIn(plain(b"alice@example.test", b"correct horse"), bytes(self.client.transport.raw))

    def test_injected_plaintext_never_executed(self) -> None:
        """
        C{STARTTLS} and C{MAIL FROM:<evil@x>} in one plaintext write: the
        MAIL is never executed and never answered, before or after the
        handshake.
        """
        self.client.take()
        self.exchange(b"EHLO client.test\r\n")
        self.assertEqual(self.exchange(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n"), lines(READY))
        self.assertTrue(self.client.tls_started)
        self.assertEqual(self.exchange(b"NOOP\r\n"), lines("250 2.0.0 Ok"))
        self.assertEqual(self.exchange(b"RCPT TO:<bob@example.test>\r\n"), lines("503 5.5.1 Error: need MAIL command"))
        self.assertEqual(self.exchange(b"MAIL FROM:<a@b.test>\r\n"), lines("503 5.5.1 Error: send HELO/EHLO first"))
        self.assertNotIn("evil", "\n".join(self.h.log_lines()))
        self.assertFalse(self.server.transport.disconnecting)


class ImplicitTLSTests(RealTLSTestsMixin, SynchronousTestCase):
    def test_encrypted_from_first_byte(self) -> None:
        """
        Through L{wrap_implicit_tls} the greeting already comes over TLS;
        STARTTLS is neither offered nor allowed; AUTH is offered to an
        untrusted client; C{Received:} names the cipher.
        """
        self.make_certificates()
        h = SMTPHarness(settings=SUBMISSION, tls=self.server_tls, checker=FakeChecker(PASSWORDS), connect=False)
        wrapped = wrap_implicit_tls(h.factory, self.server_tls, clock=h.clock)
        client_factory = TLSMemoryBIOFactory(self.client_tls, True, Factory.forProtocol(Client), clock=h.clock)
        client, server, pump = connectedServerAndClient(
            lambda: wrapped.buildProtocol(UNTRUSTED),
            lambda: client_factory.buildProtocol(None),
            clientTransportFactory=lambda p: MemoryTLSTransport(p, False, h.clock, peerAddress=UNTRUSTED),
            serverTransportFactory=lambda p: MemoryTLSTransport(p, True, h.clock, peerAddress=UNTRUSTED),
            clock=h.clock,
        )
        app = client.wrappedProtocol
        self.assertEqual(app.take(), lines(f"220 2.0.0 {HOST} ESMTP mailappliance"))
        client.write(
            b"EHLO client.test\r\nSTARTTLS\r\n"
            b"AUTH PLAIN " + plain(b"alice@example.test", b"correct horse") + b"\r\n"
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n.\r\nQUIT\r\n"
        )
        pump.flush()
        reply = app.take()
        self.assertIn(b"250 AUTH PLAIN LOGIN\r\n", reply)
        self.assertNotIn(b"STARTTLS\r\n", reply.split(b"503")[0])
        self.assertTrue(reply.endswith(lines(
            "503 5.5.1 Error: TLS already active",
            "235 2.7.0 Authentication successful",
            SENDER_OK, RCPT_OK, START, "250 2.0.0 Ok: queued as Q1", f"221 2.0.0 {HOST} Bye",
        )), reply)
        data = bytes(h.spool.writers[0].data)
        self.assertRegex(data, TLS_CLAUSE)
        self.assertIn(b" with ESMTPSA id Q1", data)
        self.assertNotIn(b"ESMTP mailappliance", bytes(server.transport.raw))
