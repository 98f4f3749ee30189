# -*- test-case-name: tests.test_smtp_policy -*-
"""
What an SMTP session may do, decided in one place (DESIGN.md, "Policy is
data").

L{SMTPSettings} is the configuration of one SMTP service (C{smtp} or
C{submission}); L{SessionFacts} is what is known about one session (peer
address, TLS, authenticated user); L{SessionPolicy} answers every question
the protocol asks from those two: which extensions to offer, whether
STARTTLS and AUTH may be used now (and the reply when not), whether MAIL
needs AUTH, which envelope senders an authenticated user may use, whether
to relay, whether to complete a submitted message's header. The protocol
holds no policy decisions of its own, so both services share one protocol
class, and STARTTLS and AUTH only change the facts
(L{SessionPolicy.with_facts}).

L{ConnectionLimiter} keeps the connection counts of one service.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Union

from mailappliance.address import Mailbox
from mailappliance.smtp import replies
from mailappliance.smtp.replies import Reply

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

SMTP_SERVICE = "smtp"
SUBMISSION_SERVICE = "submission"
SERVICES = (SMTP_SERVICE, SUBMISSION_SERVICE)

# The SASL mechanisms offered (RFC 4954): both send the password as it is,
# which is why AUTH is offered only over TLS or to trusted networks.
AUTH_MECHANISMS = ("PLAIN", "LOGIN")

DEFAULT_TRUSTED_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True)
class SMTPSettings:
    """
    The configuration of one SMTP service (SPEC section 2, C{[smtp]}).

    @ivar hostname: our name, in the greeting, EHLO reply and C{Received:}.
    @ivar max_message_size: the largest body accepted, in bytes; advertised
        with EHLO SIZE.
    @ivar max_recipients: accepted RCPT commands per transaction.
    @ivar idle_timeout: seconds a client may stay silent.
    @ivar max_connections: concurrent sessions of the whole service.
    @ivar max_connections_per_ip: concurrent sessions from one address.
    @ivar trusted_networks: clients in these may relay without AUTH.
    @ivar service: C{"smtp"} (inbound MTA) or C{"submission"} (RFC 6409).
    @ivar postmaster: the configured postmaster, whom C{RCPT
        TO:<Postmaster>} reaches; L{None} for C{postmaster@hostname}.
    """

    hostname: str
    max_message_size: int = 26214400
    max_recipients: int = 100
    idle_timeout: float = 300.0
    max_connections: int = 200
    max_connections_per_ip: int = 20
    trusted_networks: tuple[Network, ...] = field(default=DEFAULT_TRUSTED_NETWORKS)
    service: str = SMTP_SERVICE
    postmaster: Mailbox | None = None

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise ValueError(f"unknown SMTP service {self.service!r}")
        for name in ("max_message_size", "max_recipients", "max_connections", "max_connections_per_ip"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")


@dataclass(frozen=True)
class SessionFacts:
    """
    What is known about one session.

    @ivar peer: the client's address, L{None} when not an IP connection.
    @ivar tls: whether the session is encrypted (after STARTTLS, or from
        the first byte on an implicit-TLS listener).
    @ivar user: the authenticated user, or L{None}.
    @ivar starttls_possible: whether the service has a certificate and the
        connection can switch to TLS (true even once it has).
    @ivar auth_possible: whether the service can check passwords (it has a
        credentials checker).
    """

    peer: IPAddress | None = None
    tls: bool = False
    user: Mailbox | None = None
    starttls_possible: bool = False
    auth_possible: bool = False


def peer_address(host: str) -> IPAddress | None:
    """
    Parse the host of a transport's peer address.

    @return: the address, with IPv4-mapped IPv6 addresses (C{::ffff:a.b.c.d}
        on a dual-stack socket) turned into IPv4; L{None} if C{host} is not
        an IP address.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class SessionPolicy:
    """
    The answers for one session, from the service's settings and the
    session's facts. Immutable: a change of facts makes a new policy.
    """

    def __init__(self, settings: SMTPSettings, facts: SessionFacts) -> None:
        self.settings = settings
        self.facts = facts

    def with_facts(self, **changes: object) -> SessionPolicy:
        """
        @return: the policy for the same service with some facts changed
            (C{tls=True} after STARTTLS, C{user=...} after AUTH).
        """
        return SessionPolicy(self.settings, replace(self.facts, **changes))  # type: ignore[arg-type]

    @property
    def trusted(self) -> bool:
        """
        Whether the peer is in the trusted networks.
        """
        peer = self.facts.peer
        return peer is not None and any(
            peer.version == network.version and peer in network for network in self.settings.trusted_networks
        )

    @property
    def authenticated(self) -> bool:
        return self.facts.user is not None

    @property
    def may_relay(self) -> bool:
        """
        Whether mail for domains that are not local is accepted (SPEC
        section 5: from trusted networks or an authenticated session).
        """
        return self.trusted or self.authenticated

    @property
    def auth_required(self) -> bool:
        """
        Whether MAIL must be refused with C{530 5.7.0} until the client
        authenticates: on submission (RFC 6409 section 4.3, SPEC section
        5), never on the inbound MTA service.
        """
        return self.settings.service == SUBMISSION_SERVICE and not self.authenticated

    def auth_required_reply(self) -> Reply:
        """
        The C{530 5.7.0} for MAIL before AUTH: its text says STARTTLS comes
        first where AUTH is offered only after it, so that the user is not
        sent looking for an AUTH the server does not list.
        """
        if self.offers_starttls and not self.offers_auth:
            return replies.STARTTLS_FIRST
        return replies.AUTH_REQUIRED

    @property
    def _submission(self) -> bool:
        return self.settings.service == SUBMISSION_SERVICE

    @property
    def offers_starttls(self) -> bool:
        """
        Whether EHLO lists STARTTLS: TLS is configured, the connection can
        start it and it is not active yet (RFC 3207 section 4.2: not
        after the handshake).
        """
        return self.facts.starttls_possible and not self.facts.tls

    def starttls_refusal(self) -> Reply | None:
        """
        @return: why STARTTLS may not be used now (C{503 5.5.1} once TLS
            is active, RFC 3207 section 4.2 forbids a second negotiation and
            the command is a bad sequence rather than an unknown one;
            C{502 5.5.1} where it is not offered), or L{None}.
        """
        if self.facts.tls:
            return replies.TLS_ALREADY_ACTIVE
        if not self.facts.starttls_possible:
            return replies.NOT_IMPLEMENTED
        return None

    @property
    def offers_auth(self) -> bool:
        """
        Whether EHLO lists AUTH (SPEC section 5): on submission only, and
        only over TLS unless the client is in the trusted networks, since
        PLAIN and LOGIN send the password as it is (RFC 4954 section 4).
        """
        return self._submission and self.facts.auth_possible and (self.facts.tls or self.trusted)

    def auth_refusal(self) -> Reply | None:
        """
        @return: why AUTH may not be used in this session, or L{None}:
            C{503 5.5.1} where AUTH is not offered at all (the MTA
            service), C{538 5.7.11} on submission without TLS from an
            untrusted address (RFC 4954 section 6). (The order of
            commands, such as AUTH once per session, is the protocol's.)
        """
        if not (self._submission and self.facts.auth_possible):
            return replies.AUTH_NOT_ENABLED
        if not self.offers_auth:
            return replies.ENCRYPTION_REQUIRED
        return None

    def sender_needs_lookup(self, sender: Mailbox | None) -> bool:
        """
        Whether L{sender_refusal} needs to know if C{sender} resolves to
        the user's account (an alias pointing at them): on submission,
        for an authenticated user and an address that is not their own.
        """
        user = self.facts.user
        return self._submission and user is not None and sender is not None and sender.key != user.key

    def sender_refusal(self, sender: Mailbox | None, resolves_to_user: bool = False) -> Reply | None:
        """
        Whether an authenticated submission may use this envelope sender
        (RFC 6409 section 4.1, SPEC section 5): the user's own address,
        in any case, or an address that resolves to the user's account.

        The null sender is refused too: it is for bounces (RFC 5321
        section 4.5.5), which a user's mail client has no reason to send,
        and a bounce cannot be traced back to its author.

        @param resolves_to_user: whether C{sender}'s resolution through
            the resolver chain includes the user's account (asked only
            when L{sender_needs_lookup}).
        @return: C{553 5.7.1}, or L{None} when allowed (always on the MTA
            service).
        """
        user = self.facts.user
        if not self._submission or user is None:
            return None
        if sender is None:
            return replies.SENDER_NOT_OWNED
        if sender.key == user.key or resolves_to_user:
            return None
        return replies.SENDER_NOT_OWNED

    @property
    def adds_missing_headers(self) -> bool:
        """
        Whether a message without C{Message-ID:} or C{Date:} gets them
        (RFC 6409 sections 8.2 and 8.3): on submission only; the MTA
        service passes mail on as it came.
        """
        return self._submission

    @property
    def max_message_size(self) -> int:
        return self.settings.max_message_size

    @property
    def max_recipients(self) -> int:
        return self.settings.max_recipients

    @property
    def idle_timeout(self) -> float:
        return self.settings.idle_timeout

    @property
    def hostname(self) -> str:
        return self.settings.hostname

    @property
    def postmaster(self) -> Mailbox:
        """
        Whom C{RCPT TO:<Postmaster>} reaches.
        """
        if self.settings.postmaster is not None:
            return self.settings.postmaster
        return Mailbox("postmaster", self.settings.hostname.lower())

    def extensions(self) -> list[str]:
        """
        The EHLO keywords offered to this session, in order.
        """
        keywords = [
            "PIPELINING",
            f"SIZE {self.settings.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            # RFC 3030: BDAT, on both services (BINARYMIME is not offered).
            "CHUNKING",
        ]
        if self.offers_starttls:
            keywords.append("STARTTLS")
        if self.offers_auth:
            keywords.append("AUTH " + " ".join(AUTH_MECHANISMS))
        return keywords

    def received_protocol(self, esmtp: bool, smtputf8: bool) -> str:
        """
        The C{with} clause of C{Received:}: RFC 3848 (ESMTP, ESMTPS,
        ESMTPA, ESMTPSA) and RFC 6531 section 4.3 (UTF8SMTP, UTF8SMTPS,
        UTF8SMTPA, UTF8SMTPSA); plain C{SMTP} after HELO.
        """
        if not esmtp:
            return "SMTP"
        base = "UTF8SMTP" if smtputf8 else "ESMTP"
        suffix = ("S" if self.facts.tls else "") + ("A" if self.authenticated else "")
        return base + suffix


TOO_MANY_CONNECTIONS = "too-many-connections"
TOO_MANY_FROM_PEER = "too-many-connections-from-peer"


class ConnectionLimiter:
    """
    Counts the open sessions of one service, in total and per peer.
    """

    def __init__(self, max_connections: int, max_per_peer: int) -> None:
        self._max = max_connections
        self._max_per_peer = max_per_peer
        self._total = 0
        self._per_peer: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self._total

    def set_limits(self, max_connections: int, max_per_peer: int) -> None:
        """
        New limits (a configuration reload); open sessions are kept.
        """
        self._max = max_connections
        self._max_per_peer = max_per_peer

    def count(self, peer: str) -> int:
        """
        @return: the open sessions from C{peer}.
        """
        return self._per_peer.get(peer, 0)

    def admit(self, peer: str) -> str | None:
        """
        Count a new session, unless a limit is reached.

        @param peer: the peer's address as text (any non-IP peer shares
            one key).
        @return: L{None} when admitted (call L{release} when it ends),
            else L{TOO_MANY_CONNECTIONS} or L{TOO_MANY_FROM_PEER}.
        """
        if self._total >= self._max:
            return TOO_MANY_CONNECTIONS
        if self._per_peer.get(peer, 0) >= self._max_per_peer:
            return TOO_MANY_FROM_PEER
        self._total += 1
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        return None

    def release(self, peer: str) -> None:
        """
        Forget one admitted session of C{peer}.
        """
        self._total -= 1
        left = self._per_peer[peer] - 1
        if left:
            self._per_peer[peer] = left
        else:
            del self._per_peer[peer]
