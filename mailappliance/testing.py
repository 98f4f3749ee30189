# -*- test-case-name: tests.test_testing -*-
"""
Fakes for testing code that uses mailappliance, shipped with it as
C{treq.testing} ships with treq.

A fake remote SMTP server, L{FakeSMTPPeer}: a server factory that can
accept, defer (4xx) or reject (5xx) each recipient, advertise or not
PIPELINING, SIZE, 8BITMIME, SMTPUTF8, STARTTLS and AUTH, refuse the
greeting, MAIL or DATA, drop the connection or fall silent at a chosen
step, and that records every session in a L{PeerSession}.

Use it in memory: L{connect_pending} joins a connection attempt made on a
L{MemoryReactorClock} to a peer over transports whose STARTTLS runs real
TLS (certificates are checked as on the network; L{make_certificate} makes
one), and returns the L{IOPump} to move the bytes; L{refuse_pending} fails
such an attempt. Or run it as a process on loopback::

    python -m mailappliance.testing sink --port 0 --spool DIR \\
        [--reject ADDR]... [--defer ADDR]... [--starttls CERT KEY] \\
        [--auth USER:PASS] [--no-pipelining] [--size N] ...

which prints C{READY <port>} once listening and writes each message it
accepts to C{DIR/<n>.eml} (the bytes) and C{DIR/<n>.json} (envelope and
session facts), each under a temporary name first and renamed, so a reader
never sees half a file.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import json
import os
import sys
from dataclasses import asdict, dataclass, field

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import ISSLTransport, ITransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import alsoProvides, implementer

DEFAULT_RCPT_REPLY = "250 2.1.5 OK"
REJECT_REPLY = "550 5.1.1 No such user"
DEFER_REPLY = "450 4.2.1 Mailbox busy, try later"

# The steps at which a peer can be told to drop the connection or to stop
# answering: on connecting (before the greeting), on receiving the named
# command, on the first bytes of the message, or after its final dot.
STEPS = ("connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "body", "dot", "quit")


@dataclass
class PeerSession:
    """
    What a L{FakeSMTPPeer} saw in one connection.

    @ivar commands: every command line received, in order (TLS included).
    @ivar arrivals: the command lines grouped by the read that brought them
        (pipelined commands arrive together).
    @ivar helo: the last EHLO/HELO argument.
    @ivar mail_from: the last MAIL FROM address; C{mail_parameters} its
        parameters.
    @ivar rcpt_to: the accepted recipients of the last transaction.
    @ivar messages: each message received, dot-unstuffed, with its final
        CRLF (the one before the dot).
    @ivar tls: whether STARTTLS was done.
    @ivar tls_server_name: the SNI name the client sent, if any.
    @ivar auth_identity: the user name that authenticated, if any.
    """

    commands: list[bytes] = field(default_factory=list)
    arrivals: list[list[bytes]] = field(default_factory=list)
    helo: str | None = None
    mail_from: str | None = None
    mail_parameters: list[str] = field(default_factory=list)
    rcpt_to: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    tls: bool = False
    tls_server_name: str | None = None
    auth_identity: str | None = None


class FakeSMTPPeer(ServerFactory):
    """
    A fake remote SMTP server. Every keyword is also an attribute that may
    be changed between connections.

    @param hostname: its name in the greeting and EHLO reply.
    @param pipelining: advertise PIPELINING (commands are answered in order
        either way).
    @param size: advertise C{SIZE size} and refuse larger C{SIZE=}.
    @param eight_bit_mime: advertise 8BITMIME.
    @param smtputf8: advertise SMTPUTF8.
    @param tls_options: server TLS options (see L{server_tls_options}); when
        given, STARTTLS is advertised.
    @param auth: C{(username, password)}: advertise C{AUTH} with
        C{auth_mechanisms} and check them.
    @param greeting, ehlo_reply, starttls_reply, mail_reply, data_reply,
        final_reply: replies that replace the normal ones (C{ehlo_reply}
        replaces the reply to EHLO only; C{final_reply} is the reply after
        the final dot).
    @param rcpt_replies: lower-case address to the reply to its RCPT;
        others get C{DEFAULT_RCPT_REPLY}.
    @param drop_at: one of L{STEPS}: close the connection there.
    @param hang_at: one of L{STEPS}: stop answering from there on.
    @param after_starttls_reply: bytes written right after the 220 to
        STARTTLS, before TLS (a response injection attack).
    @param on_message: called with the L{PeerSession} and the message
        bytes for each message accepted.
    @ivar sessions: a L{PeerSession} per connection, in order.
    """

    def __init__(
        self,
        hostname: str = "fake.test",
        pipelining: bool = True,
        size: int | None = None,
        eight_bit_mime: bool = True,
        smtputf8: bool = True,
        tls_options=None,
        auth: tuple[str, str] | None = None,
        auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        greeting: str | None = None,
        ehlo_reply: str | None = None,
        starttls_reply: str = "220 2.0.0 Ready to start TLS",
        mail_reply: str = "250 2.1.0 OK",
        data_reply: str = "354 End data with <CR><LF>.<CR><LF>",
        final_reply: str = "250 2.0.0 OK queued",
        rcpt_replies: dict[str, str] | None = None,
        drop_at: str | None = None,
        hang_at: str | None = None,
        after_starttls_reply: bytes = b"",
        on_message=None,
    ) -> None:
        for step in (drop_at, hang_at):
            if step is not None and step not in STEPS:
                raise ValueError(f"unknown step {step!r}; one of {', '.join(STEPS)}")
        self.hostname = hostname
        self.pipelining = pipelining
        self.size = size
        self.eight_bit_mime = eight_bit_mime
        self.smtputf8 = smtputf8
        self.tls_options = tls_options
        self.auth = auth
        self.auth_mechanisms = auth_mechanisms
        self.greeting = greeting or f"220 {hostname} ESMTP fake"
        self.ehlo_reply = ehlo_reply
        self.starttls_reply = starttls_reply
        self.mail_reply = mail_reply
        self.data_reply = data_reply
        self.final_reply = final_reply
        self.rcpt_replies = dict(rcpt_replies or {})
        self.drop_at = drop_at
        self.hang_at = hang_at
        self.after_starttls_reply = after_starttls_reply
        self.on_message = on_message
        self.sessions: list[PeerSession] = []

    def reject(self, address: str, reply: str = REJECT_REPLY) -> None:
        """
        Refuse C{address} at RCPT with a 5xx reply.
        """
        self.rcpt_replies[address.lower()] = reply

    def defer(self, address: str, reply: str = DEFER_REPLY) -> None:
        """
        Refuse C{address} at RCPT with a 4xx reply.
        """
        self.rcpt_replies[address.lower()] = reply

    def buildProtocol(self, addr) -> FakeSMTPServer:
        """
        @return: a L{FakeSMTPServer} recording into a new L{PeerSession}.
        """
        session = PeerSession()
        self.sessions.append(session)
        return FakeSMTPServer(self, session)

    def ehlo_lines(self, tls: bool) -> list[str]:
        """
        @return: the lines of the 250 reply to EHLO (after the first).
        """
        lines = ["ENHANCEDSTATUSCODES"]
        lines += ["PIPELINING"] if self.pipelining else []
        lines += [f"SIZE {self.size}"] if self.size is not None else []
        lines += ["8BITMIME"] if self.eight_bit_mime else []
        lines += ["SMTPUTF8"] if self.smtputf8 else []
        lines += ["STARTTLS"] if self.tls_options is not None and not tls else []
        lines += ["AUTH " + " ".join(self.auth_mechanisms)] if self.auth else []
        return lines


class FakeSMTPServer(Protocol):
    """
    One connection to a L{FakeSMTPPeer}; see there.
    """

    def __init__(self, peer: FakeSMTPPeer, session: PeerSession) -> None:
        self.peer = peer
        self.session = session
        self._buffer = b""
        self._message: list[bytes] | None = None
        self._sasl = None
        self._silent = False
        # The transaction in progress (the record keeps the last one).
        self._mail_ok = False
        self._accepted: list[str] = []

    def connectionMade(self) -> None:
        if not self._stop_at("connect"):
            self._reply(self.peer.greeting)

    def dataReceived(self, data: bytes) -> None:
        if self._silent:
            return
        lines = (self._buffer + data).split(b"\r\n")
        self._buffer = lines.pop()
        arrival: list[bytes] = []
        for line in lines:
            if self._silent:
                return
            if self._message is not None:
                self._data_line(line)
                continue
            arrival.append(line)
            self.session.commands.append(line)
            if self._command(line):
                # After STARTTLS, plaintext read ahead must not count
                # (RFC 3207 section 4.2): drop it.
                self._buffer = b""
                break
        if arrival:
            self.session.arrivals.append(arrival)

    def _reply(self, *lines: str) -> None:
        self.transport.write(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))

    def _stop_at(self, step: str) -> bool:
        if self.peer.drop_at == step:
            self._silent = True
            self.transport.loseConnection()
            return True
        if self.peer.hang_at == step:
            self._silent = True
            return True
        return False

    def _command(self, line: bytes) -> bool:
        if self._sasl is not None:
            self._sasl(line.decode("utf-8", "replace"))
            return False
        verb, _, rest = line.decode("utf-8", "replace").partition(" ")
        verb = verb.upper()
        step = {"EHLO": "ehlo", "HELO": "ehlo", "MAIL": "mail", "RCPT": "rcpt", "DATA": "data"}.get(verb)
        step = step or verb.lower()
        if step in STEPS and self._stop_at(step):
            return False
        handler = getattr(self, "smtp_" + verb, None)
        if handler is None:
            self._reply("502 5.5.2 Command not recognised")
            return False
        return bool(handler(rest))

    def smtp_EHLO(self, rest: str) -> None:
        self.session.helo = rest
        if self.session.tls:
            name = self.transport.getHandle().get_servername()
            self.session.tls_server_name = name.decode("ascii") if name else None
        if self.peer.ehlo_reply is not None:
            self._reply(self.peer.ehlo_reply)
            return
        lines = [self.peer.hostname] + self.peer.ehlo_lines(self.session.tls)
        self._reply(*[f"250-{line}" for line in lines[:-1]], f"250 {lines[-1]}")

    def smtp_HELO(self, rest: str) -> None:
        self.session.helo = rest
        self._reply(f"250 {self.peer.hostname}")

    def smtp_STARTTLS(self, rest: str) -> bool:
        if self.peer.tls_options is None or self.session.tls:
            self._reply("502 5.5.1 STARTTLS not available")
            return False
        self._reply(self.peer.starttls_reply)
        if not self.peer.starttls_reply.startswith("220"):
            return False
        if self.peer.after_starttls_reply:
            self.transport.write(self.peer.after_starttls_reply)
        self.transport.startTLS(self.peer.tls_options)
        self.session.tls = True
        self._mail_ok, self._accepted = False, []
        return True

    def smtp_AUTH(self, rest: str) -> None:
        mechanism, _, initial = rest.partition(" ")
        mechanism = mechanism.upper()
        if not self.peer.auth or mechanism not in self.peer.auth_mechanisms:
            self._reply("504 5.5.4 Unrecognised authentication type")
        elif mechanism == "PLAIN":
            if initial:
                self._check_plain(initial)
            else:
                self._sasl = self._check_plain
                self._reply("334 ")
        else:
            self._sasl = self._login_user
            self._reply("334 VXNlcm5hbWU6")

    def _check_plain(self, response: str) -> None:
        self._sasl = None
        try:
            _, user, password = base64.b64decode(response, validate=True).decode("utf-8").split("\0")
        except ValueError:
            self._reply("501 5.5.2 Cannot decode response")
            return
        self._check_credentials(user, password)

    def _login_user(self, response: str) -> None:
        user = base64.b64decode(response).decode("utf-8", "replace")
        self._sasl = lambda answer: self._check_credentials(user, base64.b64decode(answer).decode("utf-8", "replace"))
        self._reply("334 UGFzc3dvcmQ6")

    def _check_credentials(self, user: str, password: str) -> None:
        self._sasl = None
        if (user, password) == tuple(self.peer.auth):
            self.session.auth_identity = user
            self._reply("235 2.7.0 Authentication successful")
        else:
            self._reply("535 5.7.8 Authentication credentials invalid")

    def smtp_MAIL(self, rest: str) -> None:
        path, _, parameters = rest[len("FROM:") :].partition(" ")
        self.session.mail_from = path.strip("<>")
        self.session.mail_parameters = parameters.split()
        self.session.rcpt_to = self._accepted = []
        for parameter in self.session.mail_parameters:
            name, _, value = parameter.partition("=")
            if name.upper() == "SIZE" and self.peer.size and int(value) > self.peer.size:
                self._reply("552 5.3.4 Message size exceeds fixed maximum message size")
                return
        self._reply(self.peer.mail_reply)
        self._mail_ok = self.peer.mail_reply.startswith("2")

    def smtp_RCPT(self, rest: str) -> None:
        if not self._mail_ok:
            self._reply("503 5.5.1 MAIL first")
            return
        address = rest[len("TO:") :].split(" ")[0].strip("<>")
        reply = self.peer.rcpt_replies.get(address.lower(), DEFAULT_RCPT_REPLY)
        if reply.startswith("2"):
            self._accepted.append(address)
        self._reply(reply)

    def smtp_DATA(self, rest: str) -> None:
        if not self._accepted:
            self._reply("554 5.5.1 No valid recipients")
            return
        self._reply(self.peer.data_reply)
        if self.peer.data_reply.startswith("354"):
            self._message = []

    def smtp_RSET(self, rest: str) -> None:
        self._mail_ok, self._accepted = False, []
        self._reply("250 2.0.0 OK")

    def smtp_NOOP(self, rest: str) -> None:
        self._reply("250 2.0.0 OK")

    def smtp_QUIT(self, rest: str) -> None:
        self._reply("221 2.0.0 Bye")
        self.transport.loseConnection()

    def _data_line(self, line: bytes) -> None:
        if not self._message and self._stop_at("body"):
            return
        if line != b".":
            # RFC 5321 section 4.5.2: remove one leading dot.
            self._message.append(line[1:] if line.startswith(b".") else line)
            return
        message = b"".join(part + b"\r\n" for part in self._message)
        self._message = None
        if self._stop_at("dot"):
            return
        if self.peer.final_reply.startswith("2"):
            self.session.messages.append(message)
            if self.peer.on_message is not None:
                self.peer.on_message(self.session, message)
        self._reply(self.peer.final_reply)
        self._mail_ok, self._accepted = False, []


# Certificates


def make_certificate(hostname: str = "mx.test") -> tuple[bytes, bytes]:
    """
    A fresh self-signed certificate for C{hostname} and 127.0.0.1, usable
    as its own trust root.

    @return: the certificate and its private key, PEM.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def server_tls_options(certificate_pem: bytes, key_pem: bytes):
    """
    @return: server TLS options (a L{CertificateOptions}) for
        L{FakeSMTPPeer}'s C{tls_options}.
    """
    return PrivateCertificate.loadPEM(key_pem + certificate_pem).options()


def trust_root(certificate_pem: bytes):
    """
    @return: an L{IOpenSSLTrustRoot} that trusts exactly this (self-signed)
        certificate.
    """
    return Certificate.loadPEM(certificate_pem)


# In-memory connections with real TLS


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


# The command-line sink

LOOPBACK_INTERFACES = ("127.0.0.1", "::1")


class MessageSink:
    """
    Writes each message a L{FakeSMTPPeer} accepts into a folder: C{<n>.eml}
    and C{<n>.json}, each written under a temporary name and renamed.
    Numbers continue after those already there.

    This is a test fake: it writes on the reactor thread, which the product
    itself never does.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory
        os.makedirs(directory, exist_ok=True)
        taken = [int(n.split(".")[0]) for n in os.listdir(directory) if n.split(".")[0].isdigit()]
        self._next = max(taken, default=0) + 1

    def __call__(self, session: PeerSession, message: bytes) -> None:
        number, self._next = self._next, self._next + 1
        facts = asdict(session)
        del facts["commands"], facts["arrivals"], facts["messages"]
        facts["size"] = len(message)
        self._write(f"{number}.eml", message)
        self._write(f"{number}.json", json.dumps(facts, indent=1).encode("utf-8"))

    def _write(self, name: str, data: bytes) -> None:
        path = os.path.join(self._directory, name)
        temporary = os.path.join(self._directory, f".{name}.tmp")
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, path)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mailappliance.testing")
    commands = parser.add_subparsers(dest="command", required=True)
    sink = commands.add_parser("sink", help="run a fake SMTP server that stores what it receives")
    sink.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one")
    sink.add_argument("--interface", default="127.0.0.1", choices=LOOPBACK_INTERFACES)
    sink.add_argument("--spool", required=True, help="folder for <n>.eml and <n>.json")
    sink.add_argument("--hostname", default="sink.test")
    sink.add_argument("--reject", action="append", default=[], metavar="ADDR", help="550 at RCPT")
    sink.add_argument("--defer", action="append", default=[], metavar="ADDR", help="450 at RCPT")
    sink.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"), help="offer STARTTLS with these PEM files")
    sink.add_argument("--auth", metavar="USER:PASS", help="offer AUTH PLAIN LOGIN and check these")
    sink.add_argument("--pipelining", action=argparse.BooleanOptionalAction, default=True)
    sink.add_argument("--8bitmime", dest="eight_bit_mime", action=argparse.BooleanOptionalAction, default=True)
    sink.add_argument("--smtputf8", action=argparse.BooleanOptionalAction, default=True)
    sink.add_argument("--size", type=int, default=None, help="advertise SIZE and refuse larger messages")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, reactor=None) -> None:
    """
    Run the command line (see the module docstring) until killed.
    """
    arguments = _arguments(sys.argv[1:] if argv is None else argv)
    if reactor is None:
        from twisted.internet import reactor
    tls_options = None
    if arguments.starttls:
        with open(arguments.starttls[0], "rb") as cert, open(arguments.starttls[1], "rb") as key:
            tls_options = server_tls_options(cert.read(), key.read())
    auth = tuple(arguments.auth.split(":", 1)) if arguments.auth else None
    peer = FakeSMTPPeer(
        hostname=arguments.hostname,
        pipelining=arguments.pipelining,
        size=arguments.size,
        eight_bit_mime=arguments.eight_bit_mime,
        smtputf8=arguments.smtputf8,
        tls_options=tls_options,
        auth=auth,
        on_message=MessageSink(arguments.spool),
    )
    for address in arguments.reject:
        peer.reject(address)
    for address in arguments.defer:
        peer.defer(address)
    port = reactor.listenTCP(arguments.port, peer, interface=arguments.interface)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
