# -*- test-case-name: tests.test_tls,tests.test_pop3_tls -*-
"""
Server-side TLS from the C{[tls]} section: a certificate chain and key in
PEM files, for STARTTLS/STLS (C{transport.startTLS}) and for implicit-TLS
listeners (RFC 8314).

L{ServerTLS} provides L{IOpenSSLServerConnectionCreator}, so the one object
goes to C{transport.startTLS} and to L{TLSMemoryBIOFactory} alike. Its
L{ServerTLS.reload} re-reads the files (on SIGHUP): connections made after
it use the new certificate, connections already open keep theirs, and a
failed reload keeps the old certificate in force.

Protocol versions and ciphers are Twisted's L{CertificateOptions} defaults
(its secure cipher list, no compression, single-use DH/ECDH keys) with
TLS 1.2 as the minimum (RFC 8996 retired 1.0 and 1.1).
"""

from __future__ import annotations

import os
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from mailappliance.logtext import quote

MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2

# Twisted's default list without static-RSA key exchange (no forward
# secrecy), as Dovecot's default list (!kRSA); clients that do TLS 1.2 all
# offer ECDHE.
SERVER_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(
    "TLS13-AES-256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES-128-GCM-SHA256:"
    "ECDH+AESGCM:ECDH+CHACHA20:DH+AESGCM:DH+CHACHA20:ECDH+AES256:DH+AES256:ECDH+AES128:DH+AES:"
    "!kRSA:!aNULL:!MD5:!DSS"
)

# PEM files bigger than this are not certificates or keys we should parse.
MAX_PEM_FILE = 1024 * 1024



class TLSConfigError(Exception):
    """
    The certificate or key cannot be used. C{str(error)} is one line naming
    the file and what is wrong with it.
    """


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_FILE + 1)
    except FileNotFoundError:
        raise TLSConfigError(f"{path}: {what} file not found")
    except IsADirectoryError:
        raise TLSConfigError(f"{path}: {what} file is a directory")
    except OSError as e:
        raise TLSConfigError(f"{path}: cannot read {what} file: {e.strerror or e}")
    if len(data) > MAX_PEM_FILE:
        raise TLSConfigError(f"{path}: {what} file is too large to be PEM")
    return data


def _public_bytes(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certificate_options(certificate_path: str, key_path: str) -> CertificateOptions:
    """
    Read and check a PEM certificate chain and its private key, and build
    the TLS server options from them. Blocking (reads two small files).

    @param certificate_path: the chain: the server certificate first, then
        any intermediates.
    @param key_path: the unencrypted private key of the first certificate.
    @return: the options, with their OpenSSL context already built (so any
        problem shows now, not at the first connection).
    @raise TLSConfigError: if a file is missing or unreadable, not PEM, the
        key is encrypted, or the key does not match the certificate.
    """
    chain_pem = _read_pem(certificate_path, "certificate")
    key_pem = _read_pem(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise TLSConfigError(f"{certificate_path}: not a PEM certificate")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSConfigError(f"{key_path}: the private key is encrypted; give an unencrypted key")
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"{key_path}: not a PEM private key")
    if _public_bytes(chain[0].public_key()) != _public_bytes(key.public_key()):
        raise TLSConfigError(f"{key_path}: the key does not match the certificate in {certificate_path}")
    try:
        # cryptography objects, not pyOpenSSL ones (deprecated there);
        # CertificateOptions hands them straight to the OpenSSL context.
        options = CertificateOptions(
            privateKey=key,
            certificate=chain[0],
            extraCertChain=chain[1:],
            raiseMinimumTo=MINIMUM_TLS_VERSION,
            acceptableCiphers=SERVER_CIPHERS,
        )
        options.getContext()
    except (SSL.Error, ValueError, TypeError) as e:
        raise TLSConfigError(f"{certificate_path}: cannot use this certificate and key: {e}")
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The server side of TLS, from a certificate chain and key in PEM files.

    @ivar certificate_path: the chain file.
    @ivar key_path: the key file.
    """

    def __init__(self, certificate_path: str, key_path: str, options: CertificateOptions, log: Logger | None = None,
                 hostname: str | None = None):
        """
        Use L{from_files}; this takes options already loaded.

        @param hostname: the server's name, that the certificate should be
            for (see L{certificate_warnings}).
        """
        self.certificate_path = certificate_path
        self.key_path = key_path
        self.hostname = hostname
        self._options = options
        self._log = log if log is not None else Logger(namespace="mailappliance.tls")

    @classmethod
    def from_files(cls, certificate_path: str, key_path: str, log: Logger | None = None,
                   hostname: str | None = None) -> ServerTLS:
        """
        Load the certificate chain and key, and log what
        L{certificate_warnings} finds.

        @raise TLSConfigError: as L{load_certificate_options}.
        """
        certificate_path = os.path.abspath(certificate_path)
        key_path = os.path.abspath(key_path)
        tls = cls(certificate_path, key_path, load_certificate_options(certificate_path, key_path), log, hostname)
        tls.log_warnings(certificate_warnings(certificate_path, hostname))
        return tls

    def log_warnings(self, warnings: list[str]) -> None:
        for warning in warnings:
            self._log.warn("service=tls event=certificate status=warning certificate={path} reason={reason}",
                           path=self.certificate_path, reason=quote(warning))

    def reload(self) -> None:
        """
        Re-read both files (for SIGHUP, after a certificate renewal). On
        success new connections use them; on failure the certificate in use
        stays, the problem is logged, and the error raised.

        Blocking: reads two small files; call it where that is acceptable
        (a signal handler's deferred call, or the disk pool).

        @raise TLSConfigError: if the new files cannot be used.
        """
        try:
            options = load_certificate_options(self.certificate_path, self.key_path)
        except TLSConfigError as e:
            self._log.error("service=tls event=reload status=failed error={error}", error=quote(str(e)))
            raise
        self._options = options
        self._log.info("service=tls event=reload status=ok certificate={path}", path=self.certificate_path)
        self.log_warnings(certificate_warnings(self.certificate_path, self.hostname))

    def reload_in(self, disk: Any) -> Any:
        """
        L{reload}, with the files read in the disk pool (the reactor thread
        never blocks on them); the new certificate is put in force, and
        logged, back on the reactor thread.

        @return: a L{Deferred} firing with L{True}, or L{False} when the new
            files could not be used (logged; the old certificate stays).
        """

        def loaded(result: Any) -> bool:
            self._options, warnings = result
            self._log.info("service=tls event=reload status=ok certificate={path}", path=self.certificate_path)
            self.log_warnings(warnings)
            return True

        def failed(failure: Any) -> bool:
            failure.trap(TLSConfigError)
            self._log.error("service=tls event=reload status=failed error={error}", error=quote(str(failure.value)))
            return False

        def load() -> tuple[CertificateOptions, list[str]]:
            options = load_certificate_options(self.certificate_path, self.key_path)
            return options, certificate_warnings(self.certificate_path, self.hostname)

        d = disk.run(load)
        return d.addCallbacks(loaded, failed)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        L{IOpenSSLServerConnectionCreator}: a new server connection with the
        current certificate.
        """
        return SSL.Connection(self._options.getContext(), None)

    def getContext(self) -> SSL.Context:
        """
        The current OpenSSL context, for APIs that still take an
        L{IOpenSSLContextFactory}.
        """
        return self._options.getContext()


def certificate_warnings(certificate_path: str, hostname: str | None, now: float | None = None) -> list[str]:
    """
    What is wrong with a certificate that can still be served: expired,
    not valid yet, or not for the server's name (C{[server] hostname},
    which clients that check names connect to). Each is a warning, not an
    error: a renewed certificate may be on its way, and opportunistic TLS
    between servers works with any certificate. Blocking (reads one small
    file).

    @return: one sentence per problem; none for a good certificate (or
        one that cannot be read: L{load_certificate_options} says why).
    """
    import datetime

    from service_identity import CertificateError, VerificationError
    from service_identity.cryptography import verify_certificate_hostname

    try:
        certificate = x509.load_pem_x509_certificates(_read_pem(certificate_path, "certificate"))[0]
    except (TLSConfigError, ValueError, IndexError):
        return []
    moment = datetime.datetime.now(datetime.UTC) if now is None else datetime.datetime.fromtimestamp(now,
                                                                                                    datetime.UTC)
    warnings = []
    if certificate.not_valid_after_utc < moment:
        warnings.append(f"the certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if certificate.not_valid_before_utc > moment:
        warnings.append(f"the certificate is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if hostname:
        try:
            verify_certificate_hostname(certificate, hostname)
        except CertificateError:
            # Names are checked in subjectAltName only (RFC 6125); a
            # certificate made with "openssl req -subj /CN=..." has none.
            warnings.append("the certificate has no subjectAltName, so clients that check names refuse it "
                            "(its common name does not count)")
        except VerificationError:
            warnings.append(f"the certificate is not for {hostname} (the server's hostname)")
    return warnings


def tls_error_text(reason: Any) -> str | None:
    """
    Why a connection ended, when TLS ended it (a failed handshake: a
    client that offers only TLS 1.0, no common cipher, plain text sent to
    a TLS port): OpenSSL's reasons, as Dovecot and Postfix log them.

    @param reason: the L{Failure} given to C{connectionLost}.
    @return: the text, or L{None} when TLS had nothing to do with it.
    """
    if reason is None or not reason.check(SSL.Error):
        return None
    details = reason.value.args[0] if reason.value.args else None
    if isinstance(details, list) and details:
        return "; ".join(str(entry[-1]) for entry in details if isinstance(entry, tuple) and entry) or str(reason.value)
    return str(reason.value) or type(reason.value).__name__


def wrap_implicit_tls(factory: Any, server_tls: ServerTLS, clock: Any = None) -> TLSMemoryBIOFactory:
    """
    Wrap a protocol factory for an implicit-TLS listener (RFC 8314: TLS
    from the first byte, ports 465 and 995), for C{listen_tls} endpoints.

    @param factory: the service's own factory (the same object that serves
        its plain listeners, so limits apply to both).
    @param server_tls: the certificate to serve.
    @param clock: the clock the TLS layer batches small writes with; the
        global reactor if L{None}.
    @return: a factory to listen with.
    """
    return TLSMemoryBIOFactory(server_tls, False, factory, clock)
