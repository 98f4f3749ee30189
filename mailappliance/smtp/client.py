# -*- test-case-name: tests.test_smtp_client -*-
"""
Outbound SMTP: deliver one queued message to one destination, with a
result for every recipient (SPEC section 5, "Outbound relay").

L{deliver} tries each address of each host in order (the hosts come from
L{mailappliance.queue.routing}: MX hosts by preference, or the smarthost).
A session that cannot take the message (connection refused or lost, time-
out, a 4xx/5xx greeting, a 4xx to MAIL, TLS required but unavailable, ...)
moves the recipients it left undecided on to the next address; replies
about single recipients (RCPT, the reply after the data) decide those
recipients for this attempt. When no host is left, every undecided
recipient gets a temporary failure naming the last problem, and the queue
retries later.

The modules beside this one hold the parts: C{client_protocol} (replies,
time-outs, STARTTLS on the wire), C{client_session} (the dialogue),
C{client_body} (streaming the body), C{client_tls} (certificate checks),
C{client_outcome} (the results).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailappliance.address import AddressError, parse_mailbox
from mailappliance.disk import SynchronousDiskPool
from mailappliance.smtp.client_body import SpoolFile
from mailappliance.smtp.client_cache import IdleConnection
from mailappliance.smtp.client_outcome import (
    DELIVERED,
    PERMANENT,
    TEMPORARY,
    DeliveryOutcome,
    RecipientResult,
)
from mailappliance.smtp.client_protocol import (
    ConnectionProblem,
    SMTPClientChannel,
    describe_failure,
)
from mailappliance.smtp.client_session import (
    COMMAND_TIMEOUT,
    DATA_BLOCK_TIMEOUT,
    DATA_END_TIMEOUT,
    DATA_INIT_TIMEOUT,
    GREETING_TIMEOUT,
    MAIL_TIMEOUT,
    QUIT_TIMEOUT,
    RCPT_TIMEOUT,
    TLS_NONE,
    TLS_OPPORTUNISTIC,
    TLS_REQUIRED,
    Session,
    SessionResult,
    Timeouts,
)

__all__ = [
    "COMMAND_TIMEOUT",
    "DATA_BLOCK_TIMEOUT",
    "DATA_END_TIMEOUT",
    "DATA_INIT_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DELIVERED",
    "GREETING_TIMEOUT",
    "MAIL_TIMEOUT",
    "PERMANENT",
    "QUIT_TIMEOUT",
    "RCPT_TIMEOUT",
    "TEMPORARY",
    "TLS_NONE",
    "TLS_OPPORTUNISTIC",
    "TLS_REQUIRED",
    "ClientOptions",
    "DeliveryOutcome",
    "OutboundMessage",
    "RecipientResult",
    "Timeouts",
    "deliver",
]

DEFAULT_CONNECT_TIMEOUT = 30.0

log = Logger()


@dataclass(frozen=True)
class ClientOptions:
    """
    How to deliver.

    @ivar helo_hostname: our name in EHLO/HELO.
    @ivar tls: C{"required"} (no STARTTLS, a refused STARTTLS or a failed
        handshake or verification fails the host temporarily, 4.7.5),
        C{"opportunistic"} (STARTTLS when offered; after a failed handshake
        the same address is tried once more without TLS) or C{"none"}.
    @ivar tls_verify: check the certificate chain and host name.
    @ivar auth: L{None}, or C{(username, password)} for AUTH PLAIN (else
        LOGIN), sent only over TLS unless C{tls} is C{"none"}.
    @ivar connect_timeout: seconds to wait for a TCP connection.
    @ivar timeout_factor: multiplies every reply time-out of RFC 5321
        section 4.5.3.2 (see L{Timeouts}); tests make them short.
    @ivar trust_root: an L{IOpenSSLTrustRoot} for verification; L{None}
        means the system trust store (honouring C{SSL_CERT_FILE}).
    """

    helo_hostname: str
    tls: str = TLS_OPPORTUNISTIC
    tls_verify: bool = False
    auth: tuple[str, str] | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    timeout_factor: float = 1.0
    trust_root: Any = None

    def __post_init__(self) -> None:
        if self.tls not in (TLS_REQUIRED, TLS_OPPORTUNISTIC, TLS_NONE):
            raise ValueError(f"tls must be required, opportunistic or none, not {self.tls!r}")

    @property
    def timeouts(self) -> Timeouts:
        """
        The reply time-outs, scaled by C{timeout_factor}.
        """
        return Timeouts().scaled(self.timeout_factor)


@dataclass(frozen=True)
class OutboundMessage:
    """
    The message to deliver.

    @ivar sender: the envelope sender; C{""} for the null sender.
    @ivar recipients: the recipients to deliver to at this destination.
    @ivar body_path: the spool file (CRLF line ends); streamed, never read
        whole.
    @ivar size: the body's size in bytes (for C{SIZE=}): exactly the first
        C{size} bytes of C{body_path} are sent, never what follows them (the
        envelope, in a queue file of layout version 2).
    @ivar eight_bit: the message holds 8-bit octets: it is sent with
        C{BODY=8BITMIME}, and only to a server that offers 8BITMIME (see
        L{mailappliance.queue.relay.needs_8bitmime}).
    @ivar smtputf8: the message needs SMTPUTF8: it is sent with
        C{SMTPUTF8}, and only to a server that offers it (see
        L{mailappliance.queue.relay.needs_smtputf8}).
    @ivar queue_id: for the log lines.
    """

    sender: str
    recipients: tuple[str, ...]
    body_path: str
    size: int
    eight_bit: bool = False
    smtputf8: bool = False
    queue_id: str = ""


def deliver(reactor, hosts, message, options: ClientOptions, disk=None, cache=None) -> defer.Deferred:
    """
    Deliver C{message} to the first of C{hosts} that takes it.

    @param reactor: provides L{IReactorTCP} and L{IReactorTime} (and
        L{IReactorPluggableNameResolver} for a host without addresses).
    @param hosts: L{mailappliance.queue.routing.RouteHost}s in order; a
        host without addresses is connected to by name.
    @param message: an L{OutboundMessage} (or anything with its
        attributes).
    @param options: the L{ClientOptions}.
    @param disk: the L{mailappliance.disk.DiskPool} to read the spool file
        with; L{None} reads inline (tests, the command line).
    @param cache: a L{mailappliance.smtp.client_cache.SessionCache}: an
        idle connection to an address is used before a new one is opened
        (if it fails, a new connection to the same address is tried before
        the address counts as failed), and a connection whose transaction
        ended cleanly is parked there instead of closed. L{None}: one
        connection per call, closed with QUIT.
    @return: a L{Deferred} firing with a L{DeliveryOutcome} holding one
        result per recipient; it does not fail.
    """
    return _Delivery(reactor, list(hosts), message, options, disk or SynchronousDiskPool(), cache).run()


def _unsafe_address(address: str) -> bool:
    """
    Whether an address cannot be put on the wire as it is, between the
    angle brackets of C{MAIL FROM:} or C{RCPT TO:}: whatever our own server
    would refuse as a path (L{parse_mailbox}), which includes controls (CR
    and LF above all, which would inject commands, and NUL), spaces and
    angle brackets outside a quoted string, and over-long addresses. A
    quoted local part (C{"john doe"@example.test}) is a valid mailbox
    (RFC 5321 section 4.1.2, C{Quoted-string}) and is sent as it is, quotes
    included. The server that queued the address parsed it, so this is a
    last line of defence; inbound and outbound agree on what an address
    is.

    @param address: a mailbox; the null reverse-path is not asked about.
    """
    try:
        parse_mailbox(address, allow_utf8=True)
    except AddressError:
        return True
    return False


class _ChannelFactory(Factory):
    """
    What C{connectProtocol} does, quietly: the factory of one connection,
    whose protocol is the given channel. Twisted's factories log "Starting
    factory" and "Stopping factory" for every connection unless C{noisy} is
    off; the relay logs its own one-line events instead.
    """

    noisy = False

    def __init__(self, channel) -> None:
        self._channel = channel

    def buildProtocol(self, addr):
        return self._channel


class _Delivery:
    """
    One call of L{deliver}.
    """

    def __init__(self, reactor, hosts, message, options, disk, cache=None) -> None:
        self._reactor = reactor
        self._cache = cache
        self._channel = None
        self._hosts = hosts
        self._message = message
        self._options = options
        self._disk = disk
        self._qid = getattr(message, "queue_id", "") or "-"
        self._recipients = list(dict.fromkeys(message.recipients))
        self._decided: dict[str, RecipientResult] = {}
        self._used: tuple[str | None, str | None, int | None] = (None, None, None)
        self._session = SessionResult()

    @defer.inlineCallbacks
    def run(self):
        self._check_addresses()
        last_problem: tuple[ConnectionProblem, str | None] | None = None
        if not self._hosts:
            last_problem = (ConnectionProblem("no host to deliver to", "4.4.4"), None)
        fd = None
        if self._undecided():
            try:
                fd = yield self._disk.run(os.open, self._message.body_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                problem = ConnectionProblem(f"cannot open the queued message: {e.strerror or e}", "4.3.0")
                last_problem = (problem, None)
        try:
            if fd is not None:
                # The session hands it to the BodyProducer, which stops at
                # the body's end.
                tried = yield self._try_hosts(SpoolFile(fd, self._message.size))
                last_problem = tried or last_problem
        finally:
            if fd is not None:
                # Not waited for: nothing depends on it, and a generator
                # must not yield while being closed.
                self._disk.run(os.close, fd).addErrback(
                    lambda f: log.failure("qid={qid} cannot close the spool file", f, qid=self._qid)
                )
        if last_problem is None:
            last_problem = (ConnectionProblem("no host took the message", "4.4.0"), None)
        for recipient in self._undecided():
            problem, host = last_problem
            self._decided[recipient] = RecipientResult(
                recipient, TEMPORARY, problem.reason, "4" + problem.status[1:], host, problem.reply is not None
            )
        # The relay logs one line per recipient (with the queue delay), so
        # the outcome is not logged here.
        return self._outcome()

    @defer.inlineCallbacks
    def _try_hosts(self, fd):
        """
        @return: the last problem met, with its host name, or L{None}.
        """
        last_problem = None
        for host in self._hosts:
            for address in host.addresses or (host.name,):
                use_tls = self._options.tls != TLS_NONE
                while self._undecided():
                    result = yield self._attempt(host, address, use_tls, fd)
                    self._decided.update(result.decided)
                    if result.problem is None:
                        break
                    last_problem = (result.problem, host.name)
                    self._log_problem(host, address, result.problem)
                    if not result.problem.retry_elsewhere:
                        return last_problem
                    if not (result.problem.tls_failure and use_tls and self._options.tls == TLS_OPPORTUNISTIC):
                        break
                    # RFC 7435: opportunistic TLS must not make delivery
                    # worse than none; try this address again in the clear.
                    use_tls = False
                if not self._undecided():
                    return last_problem
        return last_problem

    @defer.inlineCallbacks
    def _attempt(self, host, address: str, use_tls: bool, fd):
        key = (host.name, address, host.port, use_tls)
        idle = self._cache.take(key) if self._cache is not None else None
        if idle is not None:
            result = yield self._reuse(host, idle, use_tls, fd)
            if result.problem is None or not result.problem.retry_elsewhere:
                self._park(key, result, idle.transactions + 1)
                return result
            # The server may close an idle connection at any time (RFC 5321
            # section 4.5.3.2.7): what is undecided goes over a new one.
            self._decided.update(result.decided)
            if not self._undecided():
                return SessionResult()
        result = yield self._connect_and_run(host, address, use_tls, fd)
        self._park(key, result, 1)
        return result

    @defer.inlineCallbacks
    def _reuse(self, host, idle, use_tls: bool, fd):
        self._used = (host.name, idle.address, host.port)
        self._session = SessionResult()
        self._channel = idle.channel
        session = Session(
            idle.channel, host.name, self._message, self._undecided(), self._options, use_tls,
            self._options.timeouts, self._disk, fd, self._reactor, reused=idle, keep=True,
        )
        result = yield session.run()
        self._session = result
        return result

    def _park(self, key, result: SessionResult, transactions: int) -> None:
        if not result.reusable:
            return
        _, address, _ = self._used
        self._cache.park(key, IdleConnection(
            self._channel, result.extensions, address, result.tls_protocol, result.tls_cipher, transactions))

    @defer.inlineCallbacks
    def _connect_and_run(self, host, address: str, use_tls: bool, fd):
        self._used = (host.name, address, host.port)
        self._session = SessionResult()
        channel = SMTPClientChannel(self._reactor)
        connecting = self._endpoint(address, host.port).connect(_ChannelFactory(channel))
        timeout = self._options.connect_timeout
        timer = self._reactor.callLater(timeout, connecting.cancel)
        try:
            yield connecting
        except Exception:  # noqa: BLE001 - any connect failure fails this address only
            failure = Failure()
            if timer.active():
                timer.cancel()
                trouble = describe_failure(failure)
            else:
                trouble = f"timed out after {timeout:g}s"
            why = f"cannot connect to {host.name}[{address}]:{host.port}: {trouble}"
            return SessionResult(problem=ConnectionProblem(why, "4.4.1"))
        if timer.active():
            timer.cancel()
        peer = getattr(channel.transport.getPeer(), "host", None)
        if peer and peer != address:
            self._used = (host.name, peer, host.port)
        session = Session(
            channel,
            host.name,
            self._message,
            self._undecided(),
            self._options,
            use_tls,
            self._options.timeouts,
            self._disk,
            fd,
            self._reactor,
            keep=self._cache is not None,
        )
        self._channel = channel
        result = yield session.run()
        self._session = result
        return result

    def _endpoint(self, address: str, port: int):
        timeout = self._options.connect_timeout
        try:
            version = ipaddress.ip_address(address).version
        except ValueError:
            return HostnameEndpoint(self._reactor, address, port, timeout=timeout)
        if version == 6:
            return TCP6ClientEndpoint(self._reactor, address, port, timeout=timeout)
        return TCP4ClientEndpoint(self._reactor, address, port, timeout=timeout)

    def _check_addresses(self) -> None:
        if self._message.sender and _unsafe_address(self._message.sender):
            for recipient in self._recipients:
                self._decided[recipient] = RecipientResult(
                    recipient, PERMANENT, f"invalid sender address {self._message.sender!r}", "5.1.7", None, False
                )
            return
        for recipient in self._recipients:
            if _unsafe_address(recipient):
                self._decided[recipient] = RecipientResult(
                    recipient, PERMANENT, f"invalid recipient address {recipient!r}", "5.1.3", None, False
                )

    def _undecided(self) -> list[str]:
        return [r for r in self._recipients if r not in self._decided]

    def _outcome(self) -> DeliveryOutcome:
        host, address, port = self._used
        return DeliveryOutcome(
            tuple(self._decided[r] for r in self._recipients),
            host=host,
            address=address,
            port=port,
            tls=self._session.tls,
            tls_protocol=self._session.tls_protocol,
            tls_cipher=self._session.tls_cipher,
        )

    def _log_problem(self, host, address: str, problem: ConnectionProblem) -> None:
        # A problem of ours (the queued message cannot be read, a bug) is
        # not the host's failure: the log says so.
        log.info(
            "qid={qid} relay={relay} status={status} dsn={dsn} reason={reason!r}",
            qid=self._qid,
            relay=f"{host.name}[{address}]:{host.port}",
            status="host-failed" if problem.retry_elsewhere else "local-error",
            dsn=problem.status,
            reason=problem.reason,
        )
