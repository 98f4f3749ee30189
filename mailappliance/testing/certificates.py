# -*- test-case-name: tests.test_testing -*-
"""
Certificates and TLS options for tests: a self-signed certificate made
on the spot, server options from it, and a trust root for clients.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from twisted.internet.ssl import Certificate, PrivateCertificate


def make_certificate(hostname: str = "mx.test", subject_alt_name: bool = True,
                     rsa_key: bool = False) -> tuple[bytes, bytes]:
    """
    A fresh self-signed certificate for C{hostname}, 127.0.0.1 and ::1,
    valid for 30 days, usable as its own trust root. The key is P-256
    (quick to make).

    @param subject_alt_name: L{False} leaves out the subjectAltName
        extension, so that C{hostname} is only the subject's common name
        (as in certificates of some private CAs); RFC 6125 identity checks
        must refuse such a certificate.
    @param rsa_key: L{True} for a 2048-bit RSA key instead (for tests of
        RSA key exchange).
    @return: the certificate and its private key, PEM.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    names = [
        x509.DNSName(hostname),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if subject_alt_name:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
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


def write_certificate(directory: str, hostname: str = "localhost", rsa_key: bool = False) -> tuple[str, str]:
    """
    Write a certificate made by L{make_certificate} as C{cert.pem} and its
    key as C{key.pem} (mode 0600) into C{directory}, created if needed:
    the files a C{[tls]} section names.

    @return: the paths of the certificate and the key.
    """
    os.makedirs(directory, exist_ok=True)
    certificate_pem, key_pem = make_certificate(hostname, rsa_key=rsa_key)
    certificate_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(certificate_path, "wb") as f:
        f.write(certificate_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    return certificate_path, key_path
