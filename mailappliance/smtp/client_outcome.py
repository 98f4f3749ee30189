# -*- test-case-name: tests.test_smtp_client -*-
"""
What one outbound delivery attempt achieved, per recipient.

L{DeliveryOutcome} is what L{mailappliance.smtp.client.deliver} fires with.
Every recipient of the message has exactly one L{RecipientResult}:
delivered, a temporary failure (retry later) or a permanent failure
(bounce). The queue records them, schedules retries and writes the
delivery status notification (RFC 3464) from them.
"""

from __future__ import annotations

from dataclasses import dataclass

DELIVERED = "delivered"
TEMPORARY = "temporary"
PERMANENT = "permanent"


@dataclass(frozen=True)
class RecipientResult:
    """
    The result for one recipient.

    @ivar recipient: the address, as given in the message.
    @ivar status: L{DELIVERED}, L{TEMPORARY} or L{PERMANENT}.
    @ivar reply: the remote server's reply on one line (C{"550 5.1.1 No
        such user"}) when C{remote}, else our own description of the
        problem (C{"cannot connect to mx.example[192.0.2.1]:25: ..."}).
    @ivar enhanced_status: the RFC 3463 code: the remote reply's own, or
        one we chose (C{X.0.0} for a reply without one).
    @ivar host: the name of the host that gave the reply or that the
        problem concerns (the DSN's Remote-MTA), or L{None} when no host
        was involved (a local error before connecting, no hosts at all).
    @ivar remote: L{True} when C{reply} is the remote server's reply (the
        DSN's C{Diagnostic-Code: smtp; ...}).
    """

    recipient: str
    status: str
    reply: str
    enhanced_status: str
    host: str | None
    remote: bool

    @property
    def delivered(self) -> bool:
        return self.status == DELIVERED

    @property
    def temporary(self) -> bool:
        return self.status == TEMPORARY

    @property
    def permanent(self) -> bool:
        return self.status == PERMANENT


@dataclass(frozen=True)
class DeliveryOutcome:
    """
    The result of L{mailappliance.smtp.client.deliver}.

    @ivar results: one L{RecipientResult} per recipient, in the message's
        order.
    @ivar host: the name of the last host a session was held with (or, if
        none could be reached, the last one tried); L{None} without hosts.
    @ivar address: its IP address (or name, when it had no addresses).
    @ivar port: its port.
    @ivar tls: L{True} if that session ran over TLS.
    @ivar tls_protocol: the TLS version (C{"TLSv1.3"}) or L{None}.
    @ivar tls_cipher: the cipher name or L{None}.
    """

    results: tuple[RecipientResult, ...]
    host: str | None = None
    address: str | None = None
    port: int | None = None
    tls: bool = False
    tls_protocol: str | None = None
    tls_cipher: str | None = None

    def result_for(self, recipient: str) -> RecipientResult:
        """
        @return: the result for C{recipient}.
        @raise KeyError: if it was not a recipient of the message.
        """
        for result in self.results:
            if result.recipient == recipient:
                return result
        raise KeyError(recipient)

    @property
    def delivered(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.results if r.delivered)

    @property
    def temporary(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.results if r.temporary)

    @property
    def permanent(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.results if r.permanent)
