# -*- test-case-name: tests.test_smtp_client -*-
"""
Client-side TLS for STARTTLS (RFC 3207) to a remote mail server.

Verified: C{optionsForClientTLS} checks the certificate chain against the
trust root (by default the system trust store, which OpenSSL locates
honouring C{SSL_CERT_FILE}), and L{VerifiedClientTLS} checks the host name
with service-identity, refusing a certificate that does not name the host
in a subjectAltName (see there why Twisted's own check is not enough).

Unverified (opportunistic TLS to MX hosts, RFC 7435): any certificate is
accepted, since MX host names are not authenticated by DNS anyway; the
host name is still sent as SNI so that servers hosting several names pick
the right certificate.
"""

from __future__ import annotations

import ipaddress

from OpenSSL import SSL
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
)
from twisted.python.failure import Failure
from zope.interface import implementer

# RFC 8996 retired TLS 1.0 and 1.1.
MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2


def tls_host_name(host_name: str) -> str:
    """
    The name to verify and send as SNI: an address literal
    (C{[192.0.2.1]}, C{[IPv6:2001:db8::1]}) becomes the bare address.
    """
    name = host_name.rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
        if name[:5].lower() == "ipv6:":
            name = name[5:]
    return name


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _sni_bytes(name: str) -> bytes | None:
    try:
        return name.encode("idna")
    except UnicodeError:
        return None


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedClientTLS:
    """
    TLS without certificate checks, sending SNI.

    @param host_name: the server's name; not sent when it is an IP address
        (RFC 6066 section 3 forbids literal addresses in SNI).
    """

    def __init__(self, host_name: str) -> None:
        self._options = CertificateOptions(raiseMinimumTo=MINIMUM_TLS_VERSION)
        name = tls_host_name(host_name)
        self._server_name = None if _is_ip_address(name) else _sni_bytes(name)

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        """
        @see: L{IOpenSSLClientConnectionCreator.clientConnectionForTLS}
        """
        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class VerifiedClientTLS:
    """
    TLS that checks the certificate chain and that the certificate names
    the host (RFC 6125 / RFC 7817), failing the handshake otherwise.

    The connection comes from C{optionsForClientTLS} (trust root, minimum
    version, SNI); only its certificate verify callback is replaced. The
    reason: Twisted's callback (C{twisted.internet._sslverify}, 26.10)
    fails the handshake only on service-identity's C{VerificationError}.
    For a certificate without any subjectAltName service-identity raises
    C{CertificateError} instead, which Twisted logs as critical and then
    ignores, keeping OpenSSL's verdict on the chain alone: a trusted
    certificate that names no host at all would be accepted for any host,
    and the smarthost credentials sent to it. Our callback treats every
    exception of the identity check as a failure. It is set on our own
    connections only; Twisted itself is left as it is.

    @param host_name: the server's name or address literal, as in
        L{tls_host_name}.
    @param trust_root: an L{IOpenSSLTrustRoot} to verify the chain against.
    """

    def __init__(self, host_name: str, trust_root) -> None:
        name = tls_host_name(host_name)
        self._options = optionsForClientTLS(
            name, trustRoot=trust_root, extraCertificateOptions={"raiseMinimumTo": MINIMUM_TLS_VERSION}
        )
        self._service_id = IPAddress_ID(name) if _is_ip_address(name) else DNS_ID(name)

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        """
        @see: L{IOpenSSLClientConnectionCreator.clientConnectionForTLS}
        """
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _identity_check(tlsProtocol, self._service_id)
        )
        return connection


def _identity_check(tls_protocol, service_id):
    """
    An OpenSSL verify callback: OpenSSL's verdict on the chain, and for
    the leaf certificate the identity check; any failure of that check
    aborts the handshake through C{tls_protocol.failVerification}, so the
    session sees why.
    """
    # Dropped after the leaf, as Twisted does, so that OpenSSL's reference
    # to this callback does not keep the protocol alive.
    protocol = [tls_protocol]

    def verify(connection, certificate, error_number: int, depth: int, ok: int) -> bool:
        if depth != 0:
            # Only the leaf names the host; OpenSSL judges the chain.
            return bool(ok)
        waiting, protocol[:] = protocol[:], []
        try:
            verify_service_identity(extract_patterns(certificate), [service_id], [])
        except Exception:  # noqa: BLE001 - any doubt about the identity fails it
            # An exception must not escape an OpenSSL callback (it would be
            # lost); it becomes the reason the handshake failed.
            for p in waiting:
                p.failVerification(Failure())
            return False
        return bool(ok)

    return verify


def client_tls_creator(host_name: str, verify: bool, trust_root=None):
    """
    The connection creator for STARTTLS to C{host_name}.

    @param verify: check the certificate chain and the host name.
    @param trust_root: an L{IOpenSSLTrustRoot} to verify against; L{None}
        means the system trust store (L{platformTrust}).
    @return: an L{IOpenSSLClientConnectionCreator}.
    """
    if not verify:
        return UnverifiedClientTLS(host_name)
    return VerifiedClientTLS(host_name, trust_root if trust_root is not None else platformTrust())
