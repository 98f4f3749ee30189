# -*- test-case-name: tests.test_smtp_server,tests.test_smtp_server_flow -*-
"""
Fakes for testing the SMTP server: a recipient resolver whose answers can
be held back and given in any order, a spool whose writers record what
they were given and can push back or fail on demand, a credentials
checker, a transport that can (pretend to) start TLS, and
L{SMTPHarness}, one session wired to them over a L{StringTransport} and a
L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from mailappliance.address import Mailbox
from mailappliance.interfaces import (
    IMessageWriter,
    IRecipientResolver,
    ISpool,
    Resolved,
    UnknownAddress,
)
from mailappliance.smtp.factory import SMTPFactory
from mailappliance.smtp.policy import SMTPSettings

# The session id of every harness session (the log lines carry it).
SESSION = "s1"


@implementer(IRecipientResolver)
class FakeResolver:
    """
    Resolves from a table, at once or when the test says.

    @ivar local_domains: the domains that are local.
    @ivar table: C{key -> Resolved | ResolutionError | Exception}; a
        local address not in it is an L{UnknownAddress}; an address that
        maps to nothing but is in C{accounts} resolves to itself.
    @ivar hold: when L{True}, L{resolve} returns unfired L{Deferred}s,
        recorded in L{pending} as C{(mailbox, deferred, answer)}; call
        L{answer} to fire one.
    """

    def __init__(self, local_domains: tuple[str, ...] = ("example.test",), accounts: tuple[str, ...] = ()) -> None:
        self.local_domains = set(local_domains)
        self.accounts = set(accounts)
        self.table: dict[str, Any] = {}
        self.hold = False
        self.pending: list[tuple[Mailbox, Deferred, Any]] = []
        self.asked: list[str] = []

    def is_local_domain(self, domain: str) -> bool:
        return domain in self.local_domains

    def _answer_for(self, mailbox: Mailbox) -> Any:
        if mailbox.key in self.table:
            return self.table[mailbox.key]
        if mailbox.key in self.accounts:
            return Resolved(mailbox, local=(mailbox,))
        return UnknownAddress(f"{mailbox.key}: unknown")

    def resolve(self, mailbox: Mailbox) -> Deferred:
        self.asked.append(mailbox.key)
        answer = self._answer_for(mailbox)
        if self.hold:
            d: Deferred = Deferred()
            self.pending.append((mailbox, d, answer))
            return d
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def answer(self, index: int) -> None:
        """
        Fire the held lookup at C{index} of L{pending} (and remove it).
        """
        _, d, answer = self.pending.pop(index)
        if isinstance(answer, Exception):
            d.errback(answer)
        else:
            d.callback(answer)


@implementer(IMessageWriter)
class FakeWriter:
    """
    Records a message in memory.

    @ivar data: everything written.
    @ivar state: C{"open"}, C{"committed"}, C{"aborted"}.
    @ivar envelope: what L{commit} was given.
    @ivar writes_wait: when L{True}, every L{write} returns a new
        L{Deferred}, appended to L{waits}.
    @ivar commit_result: L{None} to commit at once; an exception to fail
        with; C{"hold"} to return an unfired L{Deferred} kept in
        L{commit_deferred}.
    """

    def __init__(self, queue_id: str) -> None:
        self.queue_id = queue_id
        self.data = bytearray()
        self.state = "open"
        self.envelope: Any = None
        self.writes_wait = False
        self.waits: list[Deferred] = []
        self.commit_result: Any = None
        self.commit_deferred: Deferred | None = None
        self.aborts = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, data: bytes) -> Deferred | None:
        if self.state != "open":
            raise RuntimeError(f"write on a {self.state} writer")
        self.data += data
        if self.writes_wait:
            d: Deferred = Deferred()
            self.waits.append(d)
            return d
        return None

    def commit(self, envelope: Any) -> Deferred:
        if self.state != "open":
            raise RuntimeError(f"commit on a {self.state} writer")
        self.envelope = envelope
        if self.commit_result == "hold":
            self.commit_deferred = Deferred()
            self.commit_deferred.addCallback(self._committed)
            return self.commit_deferred
        if isinstance(self.commit_result, Exception):
            self.state = "aborted"
            return fail(self.commit_result)
        return succeed(self._committed(self.queue_id))

    def _committed(self, result: Any) -> Any:
        self.state = "committed"
        return result

    def abort(self) -> None:
        self.aborts += 1
        if self.state == "open":
            self.state = "aborted"


@implementer(ISpool)
class FakeSpool:
    """
    Hands out L{FakeWriter}s with queue ids C{Q1}, C{Q2}, ...

    @ivar writers: every writer made, in order.
    @ivar configure: called with each new writer before it is returned.
    """

    def __init__(self) -> None:
        self.writers: list[FakeWriter] = []
        self.configure: Any = None

    def new_message(self, expected: Any = None) -> FakeWriter:
        writer = FakeWriter(f"Q{len(self.writers) + 1}")
        if self.configure is not None:
            self.configure(writer)
        self.writers.append(writer)
        return writer


@implementer(ICredentialsChecker)
class FakeChecker:
    """
    Checks L{IUsernamePassword} against a table, as
    L{mailappliance.accounts.checker.AccountsChecker} does: the avatar id
    is the lower-cased login name.

    @ivar passwords: lower-case login name -> password (L{bytes}).
    @ivar seen: the C{(username, password)} of every check, in order.
    @ivar error: when set, every check fails with it (not an
        L{UnauthorizedLogin}: the store is broken).
    @ivar hold: when L{True}, checks return unfired L{Deferred}s kept in
        L{pending}; fire them with L{answer}.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwords: dict[str, bytes] | None = None) -> None:
        self.passwords = dict(passwords or {})
        self.seen: list[tuple[bytes, bytes]] = []
        self.error: Exception | None = None
        self.hold = False
        self.pending: list[tuple[Deferred, Any]] = []

    def _verdict(self, credentials: Any) -> Any:
        if self.error is not None:
            return self.error
        name = credentials.username.decode("utf-8").lower()
        if self.passwords.get(name) == credentials.password:
            return name
        return UnauthorizedLogin("wrong login name or password")

    def requestAvatarId(self, credentials: Any) -> Deferred:
        self.seen.append((credentials.username, credentials.password))
        verdict = self._verdict(credentials)
        if self.hold:
            d: Deferred = Deferred()
            self.pending.append((d, verdict))
            return d
        if isinstance(verdict, Exception):
            return fail(verdict)
        return succeed(verdict)

    def answer(self, index: int = 0) -> None:
        """
        Fire the held check at C{index} of L{pending}.
        """
        d, verdict = self.pending.pop(index)
        if isinstance(verdict, Exception):
            d.errback(verdict)
        else:
            d.callback(verdict)


class RecordingTransport(StringTransport):
    """
    A L{StringTransport} that records C{setTcpNoDelay}, as a TCP transport
    has it.
    """

    no_delay: bool | None = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


@implementer(ITLSTransport)
class TLSCapableTransport(RecordingTransport):
    """
    A L{RecordingTransport} that can start TLS, as a TCP transport can:
    C{startTLS} records its argument and what had been written before it,
    and from then on the transport provides L{ISSLTransport}. (No
    handshake happens; tests of real TLS use an in-memory connection.)

    @ivar tls_context: what C{startTLS} was given, or L{None}.
    @ivar written_before_tls: the output up to the C{startTLS} call.
    """

    tls_context: Any = None
    written_before_tls: bytes | None = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_context = contextFactory
        self.written_before_tls = self.value()
        alsoProvides(self, ISSLTransport)


class SMTPHarness:
    """
    One server session over a L{RecordingTransport}, with a L{Clock}, a
    L{FakeResolver}, a L{FakeSpool} and a log that keeps its events.

    Several harnesses may share a factory (pass C{factory}) to test what
    sessions share: connection limits, the resolver.
    """

    def __init__(
        self,
        settings: SMTPSettings | None = None,
        peer: str = "192.0.2.1",
        factory: SMTPFactory | None = None,
        connect: bool = True,
        tls: Any = None,
        checker: Any = None,
        transport_class: type = RecordingTransport,
    ) -> None:
        """
        @param tls: the factory's TLS object (anything; only handed to
            C{startTLS}), when no C{factory} is given.
        @param checker: the factory's credentials checker, likewise.
        @param transport_class: L{RecordingTransport}, or
            L{TLSCapableTransport} for a connection that can start TLS.
        """
        if factory is None:
            self.events: list[dict] = []
            factory = SMTPFactory(
                settings or SMTPSettings(hostname="mx.example.test"),
                FakeResolver(accounts=("alice@example.test", "bob@example.test")),
                FakeSpool(),
                Clock(),
                Logger(namespace="smtp-test", observer=self.events.append),
                tls=tls,
                checker=checker,
            )
            factory.events = self.events  # type: ignore[attr-defined]
        else:
            self.events = factory.events  # type: ignore[attr-defined]
        self.factory = factory
        self.clock: Clock = factory.clock  # type: ignore[assignment]
        self.resolver: FakeResolver = factory.resolver  # type: ignore[assignment]
        self.spool: FakeSpool = factory.spool  # type: ignore[assignment]
        address_type = IPv6Address if ":" in peer else IPv4Address
        self.transport = transport_class(peerAddress=address_type("TCP", peer, 40000))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        # A fixed session id, so that tests can expect whole log lines.
        self.protocol._session = SESSION
        if connect:
            self.connect()

    def connect(self) -> bytes:
        """
        Make the connection. @return: what the server wrote.
        """
        self.protocol.makeConnection(self.transport)
        return self.output()

    def output(self) -> bytes:
        """
        @return: what the server wrote since the last call.
        """
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, *chunks: bytes) -> bytes:
        """
        Deliver each chunk with one C{dataReceived}.

        @return: what the server wrote in reply.
        """
        for chunk in chunks:
            self.protocol.dataReceived(chunk)
        return self.output()

    def lose(self) -> None:
        """
        The connection goes away.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def log_lines(self) -> list[str]:
        """
        @return: the text of every event logged so far.
        """
        return [formatEvent(event) for event in self.events]
