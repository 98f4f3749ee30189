# -*- test-case-name: tests.test_smtp_client -*-
"""
Client-side TLS for STARTTLS (RFC 3207) to a remote mail server.

Verified: C{optionsForClientTLS} checks the certificate chain against the
trust root (by default the system trust store, which OpenSSL locates
honouring C{SSL_CERT_FILE}) and the host name with service-identity.

Unverified (opportunistic TLS to MX hosts, RFC 7435): any certificate is
accepted, since MX host names are not authenticated by DNS anyway; the
host name is still sent as SNI so that servers hosting several names pick
the right certificate.
"""

from __future__ import annotations

import ipaddress

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
)
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
    return optionsForClientTLS(
        tls_host_name(host_name),
        trustRoot=trust_root if trust_root is not None else platformTrust(),
        extraCertificateOptions={"raiseMinimumTo": MINIMUM_TLS_VERSION},
    )
