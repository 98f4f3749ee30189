# -*- test-case-name: tests.test_testing -*-
"""
Tests for L{mailappliance.testing}: the fake SMTP peer, in memory and as
the C{sink} command.
"""

from __future__ import annotations

import base64
import json
import os
import select
import smtplib
import ssl
import subprocess
import sys
import time

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailappliance import testing

SINK_START_TIMEOUT = 30


class PeerDialogueTests(SynchronousTestCase):
    """
    L{testing.FakeSMTPServer} over a L{StringTransport}: send/expect tables.
    """

    def talk(self, peer, script) -> testing.PeerSession:
        """
        C{script} is a list of (client line(s) to send, exact bytes the
        server must answer); the first entry's send is L{None} (the
        greeting).
        """
        transport = StringTransport()
        server = peer.buildProtocol(None)
        server.makeConnection(transport)
        for send, expect in script:
            if send is not None:
                server.dataReceived(send)
            self.assertEqual(transport.value(), expect, send)
            transport.clear()
        return peer.sessions[-1]

    def test_full_session(self) -> None:
        """
        EHLO lists what is configured; a rejected, a deferred and an
        accepted recipient; the message is dot-unstuffed and recorded.
        """
        peer = testing.FakeSMTPPeer(hostname="mx.test", size=1000, smtputf8=False)
        peer.reject("bad@x.test")
        peer.defer("later@x.test")
        session = self.talk(
            peer,
            [
                (None, b"220 mx.test ESMTP fake\r\n"),
                (
                    b"EHLO c.test\r\n",
                    b"250-mx.test\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n",
                ),
                (
                    (b"MAIL FROM:<a@c.test> SIZE=30\r\nRCPT TO:<bad@x.test>\r\nRCPT TO:<later@x.test>\r\n"
                    b"RCPT TO:<ok@x.test>\r\nDATA\r\n"),
                    (b"250 2.1.0 OK\r\n550 5.1.1 No such user\r\n450 4.2.1 Mailbox busy, try later\r\n"
                    b"250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"),
                ),
                (b"..dot\r\nline\r\n.\r\n", b"250 2.0.0 OK queued\r\n"),
                (b"QUIT\r\n", b"221 2.0.0 Bye\r\n"),
            ],
        )
        self.assertEqual(session.messages, [b".dot\r\nline\r\n"])
        self.assertEqual(session.rcpt_to, ["ok@x.test"])
        self.assertEqual(session.mail_parameters, ["SIZE=30"])
        self.assertEqual(session.arrivals[1][-1], b"DATA")

    def test_size_enforced(self) -> None:
        """
        A declared SIZE over the limit is refused at MAIL.
        """
        self.talk(
            testing.FakeSMTPPeer(size=10),
            [
                (None, b"220 fake.test ESMTP fake\r\n"),
                (b"MAIL FROM:<a@c.test> SIZE=11\r\n", b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"),
                (b"RCPT TO:<a@x.test>\r\n", b"503 5.5.1 MAIL first\r\n"),
            ],
        )

    def test_auth_plain_and_login(self) -> None:
        """
        AUTH PLAIN (with and without initial response) and LOGIN check the
        credentials and record the identity.
        """
        plain = base64.b64encode(b"\0u\0p")
        for exchange in [
            [(b"AUTH PLAIN " + plain + b"\r\n", b"235 2.7.0 Authentication successful\r\n")],
            [(b"AUTH PLAIN\r\n", b"334 \r\n"), (plain + b"\r\n", b"235 2.7.0 Authentication successful\r\n")],
            [
                (b"AUTH LOGIN\r\n", b"334 VXNlcm5hbWU6\r\n"),
                (base64.b64encode(b"u") + b"\r\n", b"334 UGFzc3dvcmQ6\r\n"),
                (base64.b64encode(b"p") + b"\r\n", b"235 2.7.0 Authentication successful\r\n"),
            ],
        ]:
            session = self.talk(
                testing.FakeSMTPPeer(auth=("u", "p")), [(None, b"220 fake.test ESMTP fake\r\n"), *exchange]
            )
            self.assertEqual(session.auth_identity, "u")
        session = self.talk(
            testing.FakeSMTPPeer(auth=("u", "p")),
            [
                (None, b"220 fake.test ESMTP fake\r\n"),
                (b"AUTH PLAIN " + base64.b64encode(b"\0u\0x") + b"\r\n", b"535 5.7.8 Authentication credentials invalid\r\n"),
            ],
        )
        self.assertIsNone(session.auth_identity)

    def test_replies_replaced(self) -> None:
        """
        Greeting, MAIL, DATA and final replies can be replaced.
        """
        self.talk(
            testing.FakeSMTPPeer(mail_reply="451 4.3.0 later", data_reply="554 5.3.0 no"),
            [
                (None, b"220 fake.test ESMTP fake\r\n"),
                (b"MAIL FROM:<>\r\nRCPT TO:<a@x.test>\r\n", b"451 4.3.0 later\r\n503 5.5.1 MAIL first\r\n"),
            ],
        )
        self.talk(testing.FakeSMTPPeer(greeting="421 4.3.2 busy"), [(None, b"421 4.3.2 busy\r\n")])

    def test_drop_and_hang(self) -> None:
        """
        C{drop_at} closes the connection at that step without answering;
        C{hang_at} stops answering.
        """
        transport = StringTransport()
        server = testing.FakeSMTPPeer(drop_at="mail").buildProtocol(None)
        server.makeConnection(transport)
        server.dataReceived(b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@x.test>\r\n")
        self.assertTrue(transport.value().endswith(b"250 SMTPUTF8\r\n"), transport.value())
        self.assertTrue(transport.disconnecting)
        transport = StringTransport()
        server = testing.FakeSMTPPeer(hang_at="connect").buildProtocol(None)
        server.makeConnection(transport)
        server.dataReceived(b"EHLO c.test\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_unknown_step(self) -> None:
        """
        A misspelt step is refused at once.
        """
        self.assertRaises(ValueError, testing.FakeSMTPPeer, drop_at="rcpt-to")


class MemoryConnectionTests(SynchronousTestCase):
    """
    L{testing.connect_pending} and L{testing.refuse_pending}.
    """

    def test_connect_and_refuse(self) -> None:
        """
        Pending attempts on a memory reactor are refused or joined to the
        peer, oldest first, with addresses that match.
        """
        from twisted.internet.protocol import ClientFactory, Protocol

        reactor = MemoryReactorClock()
        failures = []

        class Factory(ClientFactory):
            protocol = Protocol

            def clientConnectionFailed(self, connector, reason):
                failures.append(reason)

        reactor.connectTCP("192.0.2.1", 25, Factory())
        reactor.connectTCP("2001:db8::1", 25, Factory())
        testing.refuse_pending(reactor)
        self.assertEqual(len(failures), 1)
        peer = testing.FakeSMTPPeer()
        pump = testing.connect_pending(reactor, peer)
        self.assertEqual(pump.clientIO.getPeer().host, "2001:db8::1")
        self.assertEqual(pump.serverIO.getPeer().host, "::1")
        pump.flush()
        self.assertEqual(len(peer.sessions), 1)


class DirectoryMixin:
    def make_directory(self) -> str:
        """
        A new empty directory under the test's temporary tree.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path


class MessageSinkTests(DirectoryMixin, SynchronousTestCase):
    """
    L{testing.MessageSink} writes numbered files.
    """

    def test_numbering_continues(self) -> None:
        """
        Files are numbered after those already there, one C{.eml} and one
        C{.json} each, with no temporary files left.
        """
        directory = self.make_directory()
        with open(os.path.join(directory, "4.eml"), "wb"):
            pass
        sink = testing.MessageSink(directory)
        session = testing.PeerSession(mail_from="a@c.test", rcpt_to=["b@x.test"], tls=True)
        sink(session, b"body\r\n")
        self.assertEqual(sorted(os.listdir(directory)), ["4.eml", "5.eml", "5.json"])
        with open(os.path.join(directory, "5.eml"), "rb") as f:
            self.assertEqual(f.read(), b"body\r\n")
        with open(os.path.join(directory, "5.json"), "rb") as f:
            facts = json.load(f)
        self.assertEqual((facts["mail_from"], facts["rcpt_to"], facts["tls"], facts["size"]), ("a@c.test", ["b@x.test"], True, 6))


class SinkProcessTests(DirectoryMixin, SynchronousTestCase):
    """
    C{python -m mailappliance.testing sink} as a separate process, driven
    by C{smtplib}.
    """

    def start_sink(self, *arguments: str):
        self.spool = self.make_directory()
        process = subprocess.Popen(
            [sys.executable, "-m", "mailappliance.testing", "sink", "--port", "0", "--spool", self.spool, *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(self.stop, process)
        # Wait for the READY line; anything else printed first is kept for
        # the failure message.
        deadline = time.monotonic() + SINK_START_TIMEOUT
        seen = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
            line = process.stdout.readline().decode("ascii", "replace") if ready else ""
            if line.startswith("READY "):
                return int(line.split()[1])
            if not line:
                break
            seen.append(line)
        self.fail(f"the sink did not start; it printed {seen!r}")

    def stop(self, process) -> None:
        process.terminate()
        process.communicate(timeout=SINK_START_TIMEOUT)

    def test_receives_a_message(self) -> None:
        """
        The sink prints its port, takes a message from smtplib, and writes
        it (unstuffed) with its envelope; a rejected recipient is refused.
        """
        port = self.start_sink("--reject", "nobody@remote.test")
        message = b"Subject: hi\r\n\r\n.starts with a dot\r\n.\r\nend\r\n"
        with smtplib.SMTP("127.0.0.1", port, timeout=SINK_START_TIMEOUT) as smtp:
            refused = smtp.sendmail("alice@local.test", ["bob@remote.test", "nobody@remote.test"], message)
        self.assertEqual(refused, {"nobody@remote.test": (550, b"5.1.1 No such user")})
        self.assertEqual(sorted(os.listdir(self.spool)), ["1.eml", "1.json"])
        with open(os.path.join(self.spool, "1.eml"), "rb") as f:
            self.assertEqual(f.read(), message)
        with open(os.path.join(self.spool, "1.json"), "rb") as f:
            facts = json.load(f)
        self.assertEqual(facts["mail_from"], "alice@local.test")
        self.assertEqual(facts["rcpt_to"], ["bob@remote.test"])
        self.assertEqual(facts["tls"], False)

    def test_starttls_and_auth(self) -> None:
        """
        With C{--starttls} and C{--auth} the sink offers both; the JSON
        facts record TLS and the authenticated user.
        """
        directory = self.make_directory()
        certificate, key = testing.make_certificate("sink.test")
        paths = [os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")]
        for path, data in zip(paths, [certificate, key], strict=True):
            with open(path, "wb") as f:
                f.write(data)
        port = self.start_sink("--starttls", *paths, "--auth", "user@local.test:s3cret")
        context = ssl.create_default_context(cadata=certificate.decode("ascii"))
        with smtplib.SMTP("127.0.0.1", port, timeout=SINK_START_TIMEOUT) as smtp:
            smtp.starttls(context=context)
            smtp.login("user@local.test", "s3cret")
            smtp.sendmail("user@local.test", ["bob@remote.test"], b"Subject: tls\r\n\r\nhi\r\n")
        with open(os.path.join(self.spool, "1.json"), "rb") as f:
            facts = json.load(f)
        self.assertEqual((facts["tls"], facts["auth_identity"]), (True, "user@local.test"))
