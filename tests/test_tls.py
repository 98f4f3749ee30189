"""
Tests for L{mailappliance.tls}.
"""

from __future__ import annotations

import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailappliance.testing import write_certificate
from mailappliance.tls import (
    ServerTLS,
    certificate_warnings,
    TLSConfigError,
    tls_error_text,
    wrap_implicit_tls,
)


def served_certificate(server_tls: ServerTLS) -> x509.Certificate:
    connection = server_tls.serverConnectionForTLS(None)
    return connection.get_certificate().to_cryptography()


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class ServerTLSTests(SynchronousTestCase):
    def setUp(self):
        self.directory = self.mktemp()
        self.cert_path, self.key_path = write_certificate(self.directory)

    def test_from_files(self):
        """
        A matching certificate and key load; the result provides
        L{IOpenSSLServerConnectionCreator} and serves that certificate.
        """
        tls = ServerTLS.from_files(self.cert_path, self.key_path)
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, tls))
        self.assertIsInstance(tls.serverConnectionForTLS(None), SSL.Connection)
        expected = x509.load_pem_x509_certificate(read(self.cert_path))
        self.assertEqual(served_certificate(tls), expected)
        self.assertIsInstance(tls.getContext(), SSL.Context)

    def test_chain(self):
        """
        Extra certificates after the first in the file are accepted (the
        intermediate chain).
        """
        other_cert, _ = write_certificate(self.mktemp(), "intermediate.test")
        write(self.cert_path, read(self.cert_path) + read(other_cert))
        tls = ServerTLS.from_files(self.cert_path, self.key_path)
        self.assertEqual(served_certificate(tls), x509.load_pem_x509_certificates(read(self.cert_path))[0])

    def assertConfigError(self, message: str, cert_path: str | None = None, key_path: str | None = None):
        e = self.assertRaises(
            TLSConfigError, ServerTLS.from_files, cert_path or self.cert_path, key_path or self.key_path
        )
        self.assertEqual(str(e), message)
        self.assertNotIn("\n", str(e))

    def test_missing_files(self):
        """
        A missing certificate or key file is named.
        """
        missing = os.path.abspath(os.path.join(self.directory, "nope.pem"))
        self.assertConfigError(f"{missing}: certificate file not found", cert_path=missing)
        self.assertConfigError(f"{missing}: key file not found", key_path=missing)

    def test_directory(self):
        """
        A folder where a file should be is named.
        """
        folder = os.path.abspath(self.directory)
        self.assertConfigError(f"{folder}: certificate file is a directory", cert_path=folder)

    def test_unreadable(self):
        """
        A file that cannot be read is named with the reason.
        """
        import mailappliance.tls as module

        def refusing_open(path, mode="r"):
            if path == os.path.abspath(self.key_path):
                raise PermissionError(13, "Permission denied")
            return open(path, mode)

        # Patched rather than chmod, which does not stop root.
        module.open = refusing_open
        self.addCleanup(delattr, module, "open")
        self.assertConfigError(f"{os.path.abspath(self.key_path)}: cannot read key file: Permission denied")

    def test_not_pem(self):
        """
        Files that are not PEM (or hold the wrong kind of PEM) are named.
        """
        write(self.cert_path + ".bad", b"hello\n")
        write(self.key_path + ".bad", b"hello\n")
        cert_bad = os.path.abspath(self.cert_path + ".bad")
        key_bad = os.path.abspath(self.key_path + ".bad")
        self.assertConfigError(f"{cert_bad}: not a PEM certificate", cert_path=cert_bad)
        self.assertConfigError(f"{key_bad}: not a PEM private key", key_path=key_bad)
        # A key where the certificate should be, and the other way round.
        self.assertConfigError(f"{os.path.abspath(self.key_path)}: not a PEM certificate", cert_path=self.key_path)
        self.assertConfigError(f"{os.path.abspath(self.cert_path)}: not a PEM private key", key_path=self.cert_path)

    def test_encrypted_key(self):
        """
        An encrypted key is refused with a clear reason.
        """
        key = serialization.load_pem_private_key(read(self.key_path), None)
        write(
            self.key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )
        self.assertConfigError(
            f"{os.path.abspath(self.key_path)}: the private key is encrypted; give an unencrypted key"
        )

    def test_key_mismatch(self):
        """
        A key that does not belong to the certificate is refused.
        """
        other = ec.generate_private_key(ec.SECP256R1())
        write(
            self.key_path,
            other.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        self.assertConfigError(
            f"{os.path.abspath(self.key_path)}: the key does not match the certificate in "
            f"{os.path.abspath(self.cert_path)}"
        )


class ReloadTests(SynchronousTestCase):
    def setUp(self):
        self.directory = self.mktemp()
        self.cert_path, self.key_path = write_certificate(self.directory, "old.test")
        self.events = []
        self.tls = ServerTLS.from_files(
            self.cert_path, self.key_path, log=Logger(namespace="test", observer=self.events.append)
        )
        self.old = served_certificate(self.tls)

    def test_reload(self):
        """
        After reload, new connections get the new certificate; a
        connection made before keeps the old one.
        """
        before = self.tls.serverConnectionForTLS(None)
        write_certificate(self.directory, "new.test")
        self.tls.reload()
        new = served_certificate(self.tls)
        self.assertNotEqual(new, self.old)
        self.assertEqual(new.subject.rfc4514_string(), "CN=new.test")
        self.assertEqual(before.get_certificate().to_cryptography(), self.old)
        self.assertIn("status=ok", formatEvent(self.events[-1]))

    def test_failed_reload_keeps_old(self):
        """
        A reload that finds broken files raises L{TLSConfigError}, logs it,
        and keeps serving the old certificate.
        """
        write(self.key_path, b"garbage")
        e = self.assertRaises(TLSConfigError, self.tls.reload)
        self.assertEqual(str(e), f"{os.path.abspath(self.key_path)}: not a PEM private key")
        self.assertEqual(served_certificate(self.tls), self.old)
        self.assertEqual(
            formatEvent(self.events[-1]),
            f'service=tls event=reload status=failed error="{os.path.abspath(self.key_path)}: not a PEM private key"',
        )

    def test_half_renewed_keeps_old(self):
        """
        A new certificate whose key is not in place yet (a renewal caught
        half-way) is refused; the old pair stays.
        """
        write_certificate(self.mktemp(), "other.test")
        other_dir = self.mktemp()
        other_cert, _ = write_certificate(other_dir, "new.test")
        write(self.cert_path, read(other_cert))
        self.assertRaises(TLSConfigError, self.tls.reload)
        self.assertEqual(served_certificate(self.tls), self.old)


    def test_reload_in_disk_pool(self):
        """
        L{ServerTLS.reload_in} reads the files through the disk pool and
        fires with True (new certificate) or False (old one kept).
        """
        from mailappliance.disk import SynchronousDiskPool

        calls = []

        class RecordingPool(SynchronousDiskPool):
            def run(self, function, *args, **kwargs):
                calls.append(function.__name__)
                return super().run(function, *args, **kwargs)

        write_certificate(self.directory, "new.test")
        self.assertIs(self.successResultOf(self.tls.reload_in(RecordingPool())), True)
        self.assertEqual(calls, ["load"])
        self.assertEqual(served_certificate(self.tls).subject.rfc4514_string(), "CN=new.test")
        new = served_certificate(self.tls)
        write(self.key_path, b"garbage")
        self.assertIs(self.successResultOf(self.tls.reload_in(RecordingPool())), False)
        self.assertEqual(served_certificate(self.tls), new)
        self.assertIn("status=failed", formatEvent(self.events[-1]))


class WrapImplicitTLSTests(SynchronousTestCase):
    def test_wraps(self):
        """
        L{wrap_implicit_tls} gives a server-side L{TLSMemoryBIOFactory}
        around the given factory, using the L{ServerTLS}.
        """
        cert_path, key_path = write_certificate(self.mktemp())
        tls = ServerTLS.from_files(cert_path, key_path)
        inner = Factory.forProtocol(Protocol)
        wrapped = wrap_implicit_tls(inner, tls, clock=Clock())
        self.assertIsInstance(wrapped, TLSMemoryBIOFactory)
        self.assertIs(wrapped.wrappedFactory, inner)
        protocol = wrapped.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertEqual(
            protocol.getHandle().get_certificate().to_cryptography(),
            x509.load_pem_x509_certificate(read(cert_path)),
        )
        self.assertIsInstance(protocol.wrappedProtocol, Protocol)


class SelfSignedTests(SynchronousTestCase):
    def test_files(self):
        """
        The helper writes a certificate for the host name and loopback
        addresses, and a key readable by the owner only.
        """
        cert_path, key_path = write_certificate(self.mktemp(), "mail.example.test")
        certificate = x509.load_pem_x509_certificate(read(cert_path))
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["mail.example.test"])
        self.assertEqual([str(a) for a in names.get_values_for_type(x509.IPAddress)], ["127.0.0.1", "::1"])
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)


class TLSErrorTextTests(SynchronousTestCase):
    def test_reasons(self):
        """
        L{tls_error_text} gives OpenSSL's reasons for a connection TLS
        ended, and L{None} for any other end.
        """
        from OpenSSL import SSL
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        error = SSL.Error([("SSL routines", "", "unsupported protocol"), ("SSL routines", "", "no shared cipher")])
        self.assertEqual(tls_error_text(Failure(error)), "unsupported protocol; no shared cipher")
        self.assertEqual(tls_error_text(Failure(SSL.Error("odd"))), "odd")
        self.assertIsNone(tls_error_text(Failure(ConnectionDone())))
        self.assertIsNone(tls_error_text(None))


class CertificateWarningsTests(SynchronousTestCase):
    """
    L{certificate_warnings}: a certificate that can be served but is
    expired, not valid yet, or not for the server's name.
    """

    def setUp(self):
        import time

        self.now = time.time()
        self.cert_path, self.key_path = write_certificate(self.mktemp(), "mail.example.test")

    def test_good(self):
        self.assertEqual(certificate_warnings(self.cert_path, "mail.example.test"), [])
        self.assertEqual(certificate_warnings(self.cert_path, None), [])

    def test_expired_and_not_yet_valid(self):
        [expired] = certificate_warnings(self.cert_path, "mail.example.test", now=self.now + 40 * 86400)
        self.assertRegex(expired, r"^the certificate expired on \d{4}-\d\d-\d\d \d\d:\d\d UTC$")
        [early] = certificate_warnings(self.cert_path, "mail.example.test", now=self.now - 2 * 86400)
        self.assertRegex(early, r"^the certificate is not valid before \d{4}-\d\d-\d\d \d\d:\d\d UTC$")

    def test_other_name(self):
        self.assertEqual(certificate_warnings(self.cert_path, "mx.other.test"),
                         ["the certificate is not for mx.other.test (the server's hostname)"])

    def test_no_subject_alt_name(self):
        """
        A certificate with its name only in the common name (no
        subjectAltName) is said to be so, not "not for" its own name.
        """
        from mailappliance.testing.certificates import make_certificate

        certificate, _ = make_certificate("mail.example.test", subject_alt_name=False)
        path = os.path.join(self.mktemp())
        with open(path, "wb") as f:
            f.write(certificate)
        self.assertEqual(certificate_warnings(path, "mail.example.test"),
                         ["the certificate has no subjectAltName, so clients that check names refuse it "
                          "(its common name does not count)"])

    def test_logged_at_load_and_reload(self):
        """
        L{ServerTLS.from_files} and both reloads log each warning; the
        certificate is still served.
        """
        events = []
        tls = ServerTLS.from_files(self.cert_path, self.key_path, log=Logger(namespace="t", observer=events.append),
                                   hostname="mx.other.test")
        line = (f"service=tls event=certificate status=warning certificate={os.path.abspath(self.cert_path)} "
                'reason="the certificate is not for mx.other.test (the server\'s hostname)"')
        self.assertEqual([formatEvent(e) for e in events], [line])
        tls.reload()
        self.assertEqual(formatEvent(events[-1]), line)
        from mailappliance.disk import SynchronousDiskPool

        self.assertIs(self.successResultOf(tls.reload_in(SynchronousDiskPool())), True)
        self.assertEqual(formatEvent(events[-1]), line)
        self.assertIsNotNone(tls.serverConnectionForTLS(None))
