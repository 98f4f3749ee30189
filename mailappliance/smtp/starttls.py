# -*- test-case-name: tests.test_smtp_starttls -*-
"""
STARTTLS (RFC 3207) for the SMTP server, and what a session can learn
about its TLS layer.

Implicit-TLS listeners (RFC 8314) need nothing here: the session is
wrapped in a L{twisted.protocols.tls.TLSMemoryBIOProtocol} from the first
byte, which L{tls_active} recognises.
"""

from __future__ import annotations

from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet.interfaces import INegotiated, ISSLTransport, ITLSTransport
from twisted.logger import LogLevel

from mailappliance.smtp import replies
from mailappliance.smtp.policy import SessionPolicy
from mailappliance.smtp.replies import Reply
from mailappliance.smtp.transaction import Transaction

# Characters of a protocol or cipher name written into Received: as they
# are (OpenSSL's names use only these); anything else becomes "?".
_NAME_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def tls_active(transport: object) -> bool:
    """
    @return: whether C{transport} is encrypted: a TCP transport after
        C{startTLS} provides L{ISSLTransport}; the TLS layer of an
        implicit-TLS listener provides L{INegotiated}.
    """
    return ISSLTransport.providedBy(transport) or INegotiated.providedBy(transport)


def can_start_tls(transport: object) -> bool:
    """
    @return: whether C{transport} can switch to TLS (a TCP connection; not
        one that is TLS already).
    """
    return ITLSTransport.providedBy(transport) and not tls_active(transport)


def _safe_name(name: str) -> str:
    return "".join(c if c in _NAME_SAFE else "?" for c in name[:64])


def tls_description(transport: object) -> str | None:
    """
    Describe the negotiated TLS for C{Received:}, as Postfix does.

    @return: C{"using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384"}, or
        L{None} when the transport has no OpenSSL connection or the
        handshake has not finished.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        handle = get_handle()
    except Exception:
        return None
    if not isinstance(handle, SSL.Connection):
        return None
    version = handle.get_protocol_version_name()
    cipher = handle.get_cipher_name()
    if not cipher or not version or version == "Unknown":
        return None
    return f"using {_safe_name(version)} with cipher {_safe_name(cipher)}"


class SMTPStartTLSHandler:
    """
    The STARTTLS command, a mixin of
    L{mailappliance.smtp.server.SMTPServerProtocol}.

    Uses the protocol's C{factory.tls}, C{transport}, C{policy},
    C{_lines}, C{_helo}, C{_esmtp}, C{_transaction}, C{_peer_key},
    C{_send}, C{_log_event}.
    """

    factory: Any
    transport: Any
    policy: SessionPolicy
    _lines: Any
    _helo: str | None
    _esmtp: bool
    _transaction: Transaction | None
    _peer_key: str
    _send: Callable[[Reply], None]
    _log_event: Callable[..., None]

    def _starttls(self, argument: bytes) -> Reply | None:
        """
        STARTTLS (RFC 3207 section 4): refused as the policy says (503
        once TLS is active, 502 where not offered), 501 with an argument,
        503 inside a transaction. Otherwise reply 220, then:

          - drop every byte received after the command line, unread: it
            came in plaintext and must not be taken as coming from the
            TLS session (CVE-2011-0411; RFC 3207 section 4.2 lets the
            client send nothing before the handshake);
          - forget what the client said before (RFC 3207 section 4.2):
            its EHLO name, any transaction, any authentication; the
            client must send EHLO again;
          - start TLS with the service's certificate.
        """
        refusal = self.policy.starttls_refusal()
        if refusal is not None:
            return refusal
        if argument:
            return replies.STARTTLS_SYNTAX
        if self._transaction is not None:
            return replies.STARTTLS_IN_TRANSACTION
        self._send(replies.STARTTLS_READY)
        self._lines.clear()
        self._helo = None
        self._esmtp = False
        self._transaction = None
        self.policy = self.policy.with_facts(tls=True, user=None)
        self._log_event(LogLevel.info, event="starttls", peer=self._peer_key)
        self.transport.startTLS(self.factory.tls)
        return None
