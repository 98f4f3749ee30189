"""
End-to-end: the submission service (RFC 6409) against the real twistd,
with smtplib (STARTTLS and implicit TLS), swaks and msmtp: STARTTLS, AUTH
PLAIN and LOGIN, sender ownership, the Message-ID/Date added to a message
that lacks them, and relaying by an authenticated user.
"""

import json
import os
import re
import smtplib
import ssl
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.queue.ids import is_queue_id
from mailappliance.queue.spool import read_current_envelope
from tests.e2e.harness import ServerProcess, require_client, send_and_half_close, wait_until

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "correct horse"
USERS = {ALICE: PASSWORD, BOB: "battery staple"}
ALIASES = "team@example.test: alice@example.test, bob@example.test\n"
# Loopback is not trusted: AUTH needs TLS (the [smtp] section only holds
# the trusted networks; its listener is off).
UNTRUSTED_LOOPBACK = '[smtp]\nlisten = []\ntrusted_networks = ["192.0.2.0/24"]\n'

MESSAGE_ID = re.compile(rb"Message-ID: <[0-9A-Z]{16}@mail\.example\.test>\r\n")
DATE = re.compile(rb"Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                  rb"\d{4} \d\d:\d\d:\d\d \+0000\r\n")
TLS_CLAUSE = re.compile(rb"\r\n\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)\r\n")


def split_delivered(data):
    """
    Split a delivered file into its trace fields (Return-Path:,
    Delivered-To:, our folded Received:) and the message as submitted.
    """
    assert data.startswith(b"Return-Path: "), data[:40]
    end = data.index(b"\r\n", data.index(b"\r\nReceived: ") + 2)
    while data[end + 2:end + 3] in (b" ", b"\t"):
        end = data.index(b"\r\n", end + 2)
    return data[:end + 2], data[end + 2:]


class SubmissionTests(SynchronousTestCase):
    def start(self, **kw):
        kw.setdefault("users", USERS)
        kw.setdefault("aliases", ALIASES)
        kw.setdefault("services", ("submission",))
        kw.setdefault("tls", True)
        kw.setdefault("extra", UNTRUSTED_LOOPBACK)
        return ServerProcess(self, **kw).start()

    def tls_context(self, server):
        context = ssl.create_default_context(cafile=os.path.join(server.base, "tls", "cert.pem"))
        context.check_hostname = False
        return context

    def starttls_client(self, server, login=True):
        client = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30)
        self.addCleanup(client.close)
        client.starttls(context=self.tls_context(server))
        # smtplib forgets the EHLO reply at STARTTLS but only MAIL via
        # sendmail() says EHLO again.
        client.ehlo("client.test")
        if login:
            client.login(ALICE, PASSWORD)
        return client

    def test_starttls_login_and_added_fields(self):
        """
        smtplib: STARTTLS, then AUTH (smtplib picks PLAIN), then a message
        without Message-ID/Date to a local user: it is delivered byte for
        byte, with both fields added at the end of its header section, and
        a Received: naming the TLS cipher and ESMTPSA.
        """
        server = self.start()
        client = self.starttls_client(server)
        body = b"From: Alice <alice@example.test>\r\nSubject: submitted\r\n\r\n.leading dot\r\nbody\r\n"
        self.assertEqual(client.sendmail(ALICE, [BOB], body), {})
        client.quit()
        [data] = server.wait_for_messages(BOB, 1)
        trace, message = split_delivered(data)
        self.assertRegex(trace, TLS_CLAUSE)
        self.assertIn(b" with ESMTPSA id ", trace)
        self.assertTrue(message.startswith(b"From: Alice <alice@example.test>\r\nSubject: submitted\r\n"), message)
        rest = message[len(b"From: Alice <alice@example.test>\r\nSubject: submitted\r\n"):]
        found_id = MESSAGE_ID.match(rest)
        self.assertIsNotNone(found_id, rest)
        rest = rest[found_id.end():]
        found_date = DATE.match(rest)
        self.assertIsNotNone(found_date, rest)
        self.assertEqual(rest[found_date.end():], b"\r\n.leading dot\r\nbody\r\n")
        self.assertIn(f"event=auth status=ok user={ALICE}", server.log())
        self.assertNotIn(PASSWORD, server.log())

    def test_failed_handshake_logged(self):
        """
        A client that cannot agree on TLS with the implicit-TLS port (plain
        text sent to it) leaves a tls-error line with OpenSSL's reason
        before its disconnect line.
        """
        server = self.start()
        send_and_half_close(server.ports["submission_tls"], b"EHLO x\r\n")
        pattern = re.compile(r"service=submission event=tls-error peer=127\.0\.0\.1 session=(\w+) "
                             r"reason=\"[^\"]+\"\n.*service=submission event=disconnect peer=127\.0\.0\.1 "
                             r"session=\1 ")
        # The disconnect line follows the tls-error line (it may not be in
        # the log file yet when the first is).
        wait_until(lambda: pattern.search(server.log()), 10, what="the tls-error and disconnect lines")

    def test_implicit_tls(self):
        """
        SMTP_SSL on the implicit-TLS port: no STARTTLS offered, AUTH
        offered at once; a message with its own Message-ID and Date is
        delivered unchanged.
        """
        server = self.start()
        client = smtplib.SMTP_SSL("127.0.0.1", server.ports["submission_tls"], timeout=30,
                                  context=self.tls_context(server))
        self.addCleanup(client.close)
        client.ehlo("client.test")
        self.assertFalse(client.has_extn("starttls"))
        self.assertEqual(client.esmtp_features["auth"].split(), ["PLAIN", "LOGIN"])
        client.login(ALICE, PASSWORD)
        body = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <own@client.test>\r\nSubject: s\r\n\r\nhi\r\n"
        client.sendmail(ALICE, [BOB], body)
        client.quit()
        [data] = server.wait_for_messages(BOB, 1)
        trace, message = split_delivered(data)
        self.assertEqual(message, body)
        self.assertRegex(trace, TLS_CLAUSE)
        self.assertIn(b" with ESMTPSA id ", trace)

    def test_auth_needs_tls_from_untrusted(self):
        """
        From an untrusted address the plaintext EHLO offers STARTTLS but
        not AUTH, AUTH is 538 5.7.11, MAIL is 530 5.7.0 asking for STARTTLS; after STARTTLS
        AUTH is offered and works.
        """
        server = self.start()
        client = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30)
        self.addCleanup(client.close)
        client.ehlo("client.test")
        self.assertTrue(client.has_extn("starttls"))
        self.assertFalse(client.has_extn("auth"))
        self.assertEqual(client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABjb3JyZWN0IGhvcnNl"),
                         (538, b"5.7.11 Encryption required for requested authentication mechanism"))
        self.assertEqual(client.mail(ALICE), (530, b"5.7.0 Must issue a STARTTLS command first"))
        client.starttls(context=self.tls_context(server))
        client.ehlo("client.test")
        self.assertEqual(client.esmtp_features["auth"].split(), ["PLAIN", "LOGIN"])
        self.assertFalse(client.has_extn("starttls"))
        client.login(ALICE, PASSWORD)
        self.assertEqual(client.mail(ALICE)[0], 250)
        client.quit()

    def test_mail_before_auth(self):
        """
        MAIL before AUTH is 530 5.7.0, even over TLS.
        """
        server = self.start()
        client = self.starttls_client(server, login=False)
        self.assertEqual(client.mail(ALICE), (530, b"5.7.0 Authentication required"))
        client.quit()

    def test_wrong_password(self):
        """
        A wrong password is 535 5.7.8 (after the failure delay); the
        password is not logged, the login name is.
        """
        server = self.start()
        client = self.starttls_client(server, login=False)
        with self.assertRaises(smtplib.SMTPAuthenticationError) as raised:
            client.login(ALICE, "wrong guess")
        self.assertEqual(raised.exception.smtp_code, 535)
        self.assertEqual(raised.exception.smtp_error, b"5.7.8 Authentication credentials invalid")
        log = server.wait_for_log("event=auth status=failed")
        self.assertIn(f'user="{ALICE}"', log)
        self.assertNotIn("wrong guess", log)

    def test_sender_ownership(self):
        """
        Another user's address and the null sender are 553 5.7.1; the
        user's own address in another case and an alias that includes
        them are accepted.
        """
        server = self.start()
        client = self.starttls_client(server)
        self.assertEqual(client.mail(BOB), (553, b"5.7.1 Sender address not owned by user"))
        self.assertEqual(client.mail(""), (553, b"5.7.1 Sender address not owned by user"))
        with self.assertRaises(smtplib.SMTPSenderRefused):
            client.sendmail("someone@elsewhere.test", [BOB], b"Subject: spoof\r\n\r\nx\r\n")
        self.assertEqual(client.mail("ALICE@Example.Test")[0], 250)
        client.rset()
        self.assertEqual(client.mail("team@example.test")[0], 250)
        client.rset()
        client.quit()
        self.assertEqual(server.maildir_files(BOB), [])

    def test_relay_by_authenticated_user(self):
        """
        An authenticated user may send to a remote domain from an
        untrusted address: 250, and the message waits in the queue with
        the remote recipient pending (no route to the test domain).
        """
        server = self.start()
        client = self.starttls_client(server)
        self.assertEqual(client.sendmail(ALICE, ["carol@remote.test"], b"Subject: out\r\n\r\nx\r\n"), {})
        client.quit()
        messages = os.path.join(server.data_dir, "queue", "messages")
        # The envelope is in the queue file (layout 2), or in <qid>.env
        # once the message has been updated.
        queued = wait_until(lambda: [n for n in os.listdir(messages) if is_queue_id(n)], 10,
                            what="a message in the queue")
        envelope = json.loads(read_current_envelope(messages, queued[0]).to_bytes())
        [recipient] = envelope["recipients"]
        self.assertEqual((recipient["target"], recipient["state"]), ("carol@remote.test", "pending"))
        self.assertEqual(envelope["sender"], ALICE)
        # A relay attempt is still waiting for its (unanswered) DNS query,
        # which holds up a SIGTERM shutdown for a long time; the message is
        # durable, so end the server the quick way.
        server.kill()

    def swaks(self, server, *options):
        swaks = require_client(self, "swaks")
        result = subprocess.run(
            [swaks, "--server", "127.0.0.1", "--port", str(server.ports["submission"]),
             "--auth-user", ALICE, "--auth-password", PASSWORD, "--from", ALICE, "--to", BOB,
             "--helo", "client.test", *options],
            capture_output=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, (result.stdout + result.stderr).decode("utf-8", "replace"))
        return result.stdout

    def require_swaks_tls(self):
        """
        swaks does TLS only with Perl's Net::SSLeay (Debian's swaks
        recommends it, so apt-get installs it); skip without it, or fail
        where the clients are required.
        """
        swaks = require_client(self, "swaks")
        support = subprocess.run([swaks, "--support"], capture_output=True, timeout=60)
        if b"TLS not available" in support.stdout + support.stderr:
            if os.environ.get("MAILAPPLIANCE_REQUIRE_CLIENTS"):
                self.fail("swaks has no TLS support (install libnet-ssleay-perl)")
            from twisted.trial.unittest import SkipTest

            raise SkipTest("swaks has no TLS support (Net::SSLeay is missing)")

    def check_swaks_delivery(self, server, transcripts):
        for transcript in transcripts:
            self.assertIn(b"235 2.7.0 Authentication successful", transcript)
        self.assertIn(b"334 VXNlcm5hbWU6", transcripts[1])
        messages = server.wait_for_messages(BOB, 2)
        subjects = sorted(re.search(rb"Subject: (swaks \w+)", m).group(1) for m in messages)
        self.assertEqual(subjects, [b"swaks login", b"swaks plain"])
        self.assertTrue(all(b"via " in m for m in messages))

    def test_swaks_plain_and_login_over_starttls(self):
        """
        swaks with AUTH PLAIN, then AUTH LOGIN, over STARTTLS from an
        untrusted address: both messages are delivered.
        """
        self.require_swaks_tls()
        server = self.start()
        self.check_swaks_delivery(server, [
            self.swaks(server, "--tls", "--auth", "PLAIN", "--header", "Subject: swaks plain", "--body", "via plain"),
            self.swaks(server, "--tls", "--auth", "LOGIN", "--header", "Subject: swaks login", "--body", "via login"),
        ])

    def test_swaks_plain_and_login_trusted(self):
        """
        From a trusted address AUTH is offered without TLS: swaks with
        AUTH PLAIN and AUTH LOGIN in plaintext.
        """
        server = self.start(extra="")
        self.check_swaks_delivery(server, [
            self.swaks(server, "--auth", "PLAIN", "--header", "Subject: swaks plain", "--body", "via plain"),
            self.swaks(server, "--auth", "LOGIN", "--header", "Subject: swaks login", "--body", "via login"),
        ])

    def test_msmtp(self):
        """
        msmtp with a typical user configuration (STARTTLS, the test
        certificate as trust file, auth, user, password, from) sends a
        message that is delivered.
        """
        msmtp = require_client(self, "msmtp")
        server = self.start()
        config = os.path.join(server.base, "msmtprc")
        with open(config, "w") as f:
            f.write(
                "defaults\n"
                "tls on\n"
                "tls_starttls on\n"
                f"tls_trust_file {os.path.join(server.base, 'tls', 'cert.pem')}\n"
                "\n"
                "account appliance\n"
                "host 127.0.0.1\n"
                f"port {server.ports['submission']}\n"
                "auth on\n"
                f"user {ALICE}\n"
                f"password {PASSWORD}\n"
                f"from {ALICE}\n"
                "\n"
                "account default : appliance\n"
            )
        # msmtp refuses a configuration file with a password that others
        # can read.
        os.chmod(config, 0o600)
        message = b"To: bob@example.test\nSubject: from msmtp\n\nhello from msmtp\n"
        result = subprocess.run([msmtp, "-C", config, BOB], input=message, capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, (result.stdout + result.stderr).decode("utf-8", "replace"))
        [data] = server.wait_for_messages(BOB, 1)
        trace, delivered = split_delivered(data)
        self.assertRegex(trace, TLS_CLAUSE)
        self.assertIn(b" with ESMTPSA id ", trace)
        # msmtp writes its own From:, Date: and Message-ID: (a typical
        # configuration keeps them on): none is added a second time.
        self.assertTrue(delivered.endswith(b"To: bob@example.test\r\nSubject: from msmtp\r\n\r\nhello from msmtp\r\n"),
                        delivered)
        header = delivered.split(b"\r\n\r\n")[0]
        self.assertEqual(len(re.findall(rb"(?im)^message-id:", header)), 1, header)
        self.assertEqual(len(re.findall(rb"(?im)^date:", header)), 1, header)
