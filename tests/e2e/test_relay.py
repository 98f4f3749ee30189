"""
End-to-end: outbound relay against the real twistd, with a test DNS server
(twisted.names, on loopback) and a test SMTP sink (C{python -m
mailappliance.testing sink}) as the remote mail host; queue administration
and sendmail injection.
"""

import email
import email.policy
import json
import os
import smtplib
import sys

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.testing import write_certificate
from tests.e2e.harness import HelperProcess, ServerProcess, wait_until

ZONE = {
    "remote.test": {"MX": [[10, "mx.remote.test"]]},
    "mx.remote.test": {"A": ["127.0.0.1"]},
    "nomx.test": {"A": ["127.0.0.1"]},
    "nullmx.test": {"MX": [[0, ""]]},
    "servfail.test": "SERVFAIL",
    # Its best MX is the server itself ([server] hostname).
    "loop.test": {"MX": [[10, "mail.example.test"], [20, "mx.remote.test"]]},
}
USERS = {"alice@example.test": "a", "postmaster@example.test": "p"}
BODY = b"From: alice@example.test\r\nSubject: outbound\r\n\r\n.dot line\r\nGr\xc3\xbc\xc3\x9fe\r\n"


class RelayTestCase(SynchronousTestCase):
    def dns(self):
        path = os.path.join(os.path.abspath(self.mktemp()))
        with open(path, "w") as f:
            json.dump(ZONE, f)
        return HelperProcess(self, lambda port: [sys.executable, "-m", "tests.e2e.dnsserver", path], "dns").start()

    def sink(self, *options, port=None):
        spool = getattr(self, "_sink_spool", None) or os.path.abspath(self.mktemp())
        self._sink_spool = spool
        helper = HelperProcess(
            self,
            lambda p: [sys.executable, "-m", "mailappliance.testing", "sink", "--port", str(p), "--spool", spool,
                       *options],
            "sink",
        ).start(port)
        helper.spool = spool
        return helper

    def server(self, dns, sink_port, relay_options="", env=None, **kw):
        relay = (f'[relay]\ndns_servers = ["127.0.0.1:{dns.port}"]\nmx_port = {sink_port}\n'
                 f'connect_timeout = "5s"\n{relay_options}')
        kw.setdefault("users", USERS)
        return ServerProcess(self, services=("smtp",), extra=relay, env=env, **kw).start()

    def send(self, server, sender, recipients, body=BODY):
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30)
        try:
            return client.sendmail(sender, recipients, body, mail_options=["BODY=8BITMIME"])
        finally:
            client.quit()

    def received(self, sink, count, timeout=20.0):
        """
        Wait for C{count} messages at the sink; return (bytes, facts) pairs.
        """
        def ready():
            names = sorted(n for n in os.listdir(sink.spool) if n.endswith(".json") and not n.startswith("."))
            return names if len(names) >= count else None

        names = wait_until(ready, timeout, what=f"{count} message(s) at the sink")
        result = []
        for name in names:
            with open(os.path.join(sink.spool, name)) as f:
                facts = json.load(f)
            with open(os.path.join(sink.spool, name[:-5] + ".eml"), "rb") as f:
                result.append((f.read(), facts))
        return result

    def dsn(self, server, address="alice@example.test", count=1, timeout=20.0):
        messages = server.wait_for_messages(address, count, timeout)
        return [email.message_from_bytes(m, policy=email.policy.default) for m in messages]

    def queue_ids(self, server):
        result = server.cli("queue", "list")
        return [line.split()[0] for line in result.stdout.decode().splitlines() if line[:1].isalnum()
                and "message(s)" not in line and line != "queue is empty"]


class RelayTests(RelayTestCase):
    def test_mx_delivery(self):
        """
        Mail for a remote domain goes to its MX, byte-exact after our
        Received: header, with the envelope as given; the queue empties.
        """
        dns, sink = self.dns(), self.sink()
        server = self.server(dns, sink.port)
        self.send(server, "alice@example.test", ["bob@remote.test", "carol@remote.test"])
        [(data, facts)] = self.received(sink, 1)
        self.assertTrue(data.startswith(b"Received: from "), data[:80])
        self.assertTrue(data.endswith(BODY), data)
        self.assertEqual(facts["mail_from"], "alice@example.test")
        self.assertEqual(sorted(facts["rcpt_to"]), ["bob@remote.test", "carol@remote.test"])
        wait_until(lambda: self.queue_ids(server) == [], 10, what="an empty queue")
        self.assertIn("to=<bob@remote.test> relay=mx.remote.test[127.0.0.1]", server.log())
        self.assertIn("status=sent", server.log())

    def test_a_fallback(self):
        """
        A domain without MX records is delivered to its address record.
        """
        dns, sink = self.dns(), self.sink()
        server = self.server(dns, sink.port)
        self.send(server, "alice@example.test", ["someone@nomx.test"])
        [(data, facts)] = self.received(sink, 1)
        self.assertEqual(facts["rcpt_to"], ["someone@nomx.test"])

    def test_defer_then_success(self):
        """
        A 4xx keeps the message queued with its error (queue list shows it);
        after the remote recovers, queue flush delivers it.
        """
        dns = self.dns()
        sink = self.sink("--defer", "bob@remote.test")
        server = self.server(dns, sink.port, 'retry_initial = "1h"\nretry_max = "2h"\n')
        self.send(server, "alice@example.test", ["bob@remote.test"])
        wait_until(lambda: "status=deferred" in server.log(), 20, what="a deferral")
        listing = server.cli("queue", "list").stdout.decode()
        self.assertIn("to=<bob@remote.test>", listing)
        self.assertIn("450", listing)
        self.assertIn("next=in ", listing)
        sink.stop()
        sink = self.sink(port=sink.port)
        result = server.cli("queue", "flush")
        self.assertEqual(result.returncode, 0, result.stderr)
        [(data, facts)] = self.received(sink, 1)
        self.assertEqual(facts["rcpt_to"], ["bob@remote.test"])
        wait_until(lambda: self.queue_ids(server) == [], 10, what="an empty queue")

    def test_reject_one_recipient(self):
        """
        A 5xx for one recipient: a DSN in the sender's local Maildir names
        it with the remote reply; the other recipient is delivered.
        """
        dns = self.dns()
        sink = self.sink("--reject", "bad@remote.test")
        server = self.server(dns, sink.port)
        self.send(server, "alice@example.test", ["good@remote.test", "bad@remote.test"])
        [(data, facts)] = self.received(sink, 1)
        self.assertEqual(facts["rcpt_to"], ["good@remote.test"])
        [dsn] = self.dsn(server)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        report = dsn.get_payload()[1].as_string()
        self.assertIn("Final-Recipient: rfc822; bad@remote.test", report)
        self.assertIn("Action: failed", report)
        self.assertIn("Diagnostic-Code: smtp; 550", report)
        self.assertIn("Remote-MTA: dns; mx.remote.test", report)
        self.assertNotIn("good@remote.test", report)
        self.assertIn("Subject: outbound", dsn.get_payload()[2].as_string())

    def test_seven_bit_peer(self):
        """
        A peer that offers neither 8BITMIME nor SMTPUTF8 gets an all-ASCII
        message declared BODY=8BITMIME, and one declared SMTPUTF8, as they
        are, without BODY= or SMTPUTF8 (RFC 6152 section 3, RFC 6531
        section 3.4); a message that really holds 8-bit octets, declared
        or not, bounces 5.6.3 instead of reaching it raw.
        """
        dns = self.dns()
        sink = self.sink("--no-8bitmime", "--no-smtputf8")
        server = self.server(dns, sink.port)
        ascii_body = b"From: alice@example.test\r\nSubject: ascii but declared 8bit\r\n\r\nplain ascii\r\n"
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30)
        try:
            client.sendmail("alice@example.test", ["a8@remote.test"], ascii_body, mail_options=["BODY=8BITMIME"])
            client.sendmail("alice@example.test", ["u8@remote.test"], ascii_body, mail_options=["SMTPUTF8"])
            client.sendmail("alice@example.test", ["e8@remote.test"], BODY)
        finally:
            client.quit()
        received = self.received(sink, 2)
        self.assertEqual(sorted(facts["rcpt_to"] for _, facts in received), [["a8@remote.test"], ["u8@remote.test"]])
        for data, facts in received:
            self.assertEqual(facts["mail_from"], "alice@example.test")
            self.assertEqual(facts["mail_parameters"], [])
            self.assertTrue(data.startswith(b"Received: from "), data[:80])
            self.assertTrue(data.endswith(ascii_body), data)
        [dsn] = self.dsn(server)
        report = dsn.get_payload()[1].as_string()
        self.assertIn("Final-Recipient: rfc822; e8@remote.test", report)
        self.assertIn("Status: 5.6.3", report)
        self.assertIn("to=<e8@remote.test> relay=mx.remote.test", server.log())
        self.assertEqual(len([n for n in os.listdir(sink.spool) if n.endswith(".eml")]), 2)

    def test_lifetime_expiry(self):
        """
        A message still deferred after max_queue_lifetime bounces.
        """
        dns = self.dns()
        sink = self.sink("--defer", "slow@remote.test")
        server = self.server(dns, sink.port, 'retry_initial = "1s"\nretry_max = "1s"\nmax_queue_lifetime = "3s"\n')
        self.send(server, "alice@example.test", ["slow@remote.test"])
        [dsn] = self.dsn(server, timeout=30)
        report = dsn.get_payload()[1].as_string()
        self.assertIn("Final-Recipient: rfc822; slow@remote.test", report)
        self.assertIn("Status: 4.4.7", report)
        self.assertIn("expired", report)

    def test_nonexistent_domain(self):
        """
        A domain that does not exist bounces at once (5.1.2); so does a null
        MX (5.1.10, RFC 7505).
        """
        dns, sink = self.dns(), self.sink()
        server = self.server(dns, sink.port)
        self.send(server, "alice@example.test", ["x@nowhere.test"])
        self.send(server, "alice@example.test", ["y@nullmx.test"])
        dsns = self.dsn(server, count=2)
        reports = [d.get_payload()[1].as_string() for d in dsns]
        [nowhere] = [r for r in reports if "Final-Recipient: rfc822; x@nowhere.test" in r]
        self.assertIn("Status: 5.1.2", nowhere)
        [nullmx] = [r for r in reports if "Final-Recipient: rfc822; y@nullmx.test" in r]
        self.assertIn("Status: 5.1.10", nullmx)

    def test_mx_is_ourselves(self):
        """
        A domain whose best MX is our own hostname bounces at once with
        5.4.6 (RFC 5321 section 5.1), instead of going round through
        ourselves until the hop limit.
        """
        dns, sink = self.dns(), self.sink()
        server = self.server(dns, sink.port)
        self.send(server, "alice@example.test", ["x@loop.test"])
        [dsn] = self.dsn(server)
        report = dsn.get_payload()[1].as_string()
        self.assertIn("Final-Recipient: rfc822; x@loop.test", report)
        self.assertIn("Status: 5.4.6", report)
        self.assertIn("loops back to myself", " ".join(report.split()))
        self.assertEqual(os.listdir(sink.spool), [])

    def test_servfail_defers(self):
        """
        A DNS server failure (SERVFAIL, rcode 2) is temporary: the message
        is deferred (4.4.3) and kept, with no DSN; only NXDOMAIN bounces
        (test_nonexistent_domain).
        """
        dns, sink = self.dns(), self.sink()
        server = self.server(dns, sink.port, 'retry_initial = "1h"\n')
        self.send(server, "alice@example.test", ["x@servfail.test"])
        wait_until(lambda: "status=deferred" in server.log() or "status=bounced" in server.log(), 20,
                   what="a deferral")
        log = server.log()
        self.assertIn("to=<x@servfail.test> relay=none", log)
        self.assertIn('status=deferred dsn=4.4.3 reply="MX lookup for servfail.test failed: server failure (SERVFAIL)"',
                      log)
        self.assertNotIn("status=bounced", log)
        self.assertEqual(len(self.queue_ids(server)), 1)
        self.assertEqual(server.maildir_files("alice@example.test"), [])

    def test_null_sender_never_bounced(self):
        """
        A failed message from the null sender is not bounced to anyone but
        the postmaster (a double bounce); nothing goes back to <>.
        """
        dns = self.dns()
        sink = self.sink("--reject", "bad@remote.test")
        server = self.server(dns, sink.port)
        self.send(server, "", ["bad@remote.test"])
        [notice] = self.dsn(server, "postmaster@example.test")
        self.assertIn("bad@remote.test", notice.get_payload()[1].as_string())
        self.assertEqual(server.maildir_files("alice@example.test"), [])
        wait_until(lambda: self.queue_ids(server) == [], 10, what="an empty queue")
        self.assertEqual([n for n in os.listdir(sink.spool) if n.endswith(".eml")], [])

    def test_sigkill_with_mail_queued(self):
        """
        With the remote down, mail waits in the queue; after SIGKILL and a
        restart it is delivered exactly once.
        """
        dns = self.dns()
        sink = self.sink()
        port = sink.port
        sink.stop()
        server = self.server(dns, port, 'retry_initial = "1s"\nretry_max = "2s"\n')
        self.send(server, "alice@example.test", ["bob@remote.test"])
        wait_until(lambda: "status=deferred" in server.log(), 20, what="a deferral")
        server.kill()
        sink = self.sink(port=port)
        server.start()
        self.received(sink, 1)
        wait_until(lambda: self.queue_ids(server) == [], 15, what="an empty queue")
        self.assertEqual(len([n for n in os.listdir(sink.spool) if n.endswith(".eml")]), 1)

    def test_smarthost_auth_required_tls(self):
        """
        Through a smarthost that needs STARTTLS (certificate verified) and
        AUTH.
        """
        certs = os.path.abspath(self.mktemp())
        cert, key = write_certificate(certs)
        dns = self.dns()
        sink = self.sink("--starttls", cert, key, "--auth", "relayuser:relaypass")
        password = os.path.join(os.path.abspath(self.mktemp()))
        with open(password, "w") as f:
            f.write("relaypass\n")
        server = self.server(
            dns, sink.port,
            f'smarthost = "localhost:{sink.port}"\nsmarthost_username = "relayuser"\n'
            f'smarthost_password_file = "{password}"\nsmarthost_tls = "required"\n',
            env={"SSL_CERT_FILE": cert},
        )
        self.send(server, "alice@example.test", ["anyone@anywhere.test"])
        [(data, facts)] = self.received(sink, 1)
        self.assertTrue(facts["tls"])
        self.assertEqual(facts["auth_identity"], "relayuser")
        self.assertEqual(facts["rcpt_to"], ["anyone@anywhere.test"])


class QueueAdminTests(RelayTestCase):
    def test_list_and_delete(self):
        """
        queue list shows a deferred message with its recipient, error and
        next attempt; queue delete removes it (no bounce).
        """
        dns = self.dns()
        sink = self.sink("--defer", "bob@remote.test")
        server = self.server(dns, sink.port, 'retry_initial = "1h"\n')
        self.send(server, "alice@example.test", ["bob@remote.test"])
        wait_until(lambda: "status=deferred" in server.log(), 20, what="a deferral")
        [qid] = self.queue_ids(server)
        result = server.cli("queue", "delete", qid)
        self.assertEqual((result.returncode, result.stdout.decode()), (0, f"deleted {qid}\n"))
        self.assertEqual(self.queue_ids(server), [])
        result = server.cli("queue", "delete", qid)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(server.maildir_files("alice@example.test"), [])

    def test_offline_admin(self):
        """
        With the server stopped, list, flush and delete work on the files.
        """
        dns = self.dns()
        sink = self.sink("--defer", "bob@remote.test")
        server = self.server(dns, sink.port, 'retry_initial = "1h"\n')
        self.send(server, "alice@example.test", ["bob@remote.test"])
        self.send(server, "alice@example.test", ["carol@remote.test"])
        wait_until(lambda: server.log().count("status=deferred") >= 1 and len(self.queue_ids(server)) == 1, 20,
                   what="one message deferred, one delivered")
        server.stop()
        [qid] = self.queue_ids(server)
        self.assertEqual(server.cli("queue", "flush", qid).returncode, 0)
        self.assertEqual(server.cli("queue", "delete", qid).returncode, 0)
        self.assertEqual(self.queue_ids(server), [])


class SendmailTests(RelayTestCase):
    def test_cron_mail_for_nobody_reaches_postmaster(self):
        """
        Cron mail for root on a host with no root account or alias: the
        bounce to root (nobody either) reaches the postmaster instead of
        being dropped.
        """
        dns, sink = self.dns(), self.sink()
        server = self.server(dns, sink.port)
        result = server.cli("sendmail", "root", stdin=b"Subject: cron output\n\nall good\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        [report] = self.dsn(server, "postmaster@example.test")
        self.assertEqual(report["Subject"], "Postmaster Copy: Undelivered Mail")
        self.assertIn("Final-Recipient: rfc822; root@example.test", report.get_payload()[1].as_string())
        self.assertIn("Subject: cron output", report.get_payload()[2].as_string())

    def test_sendmail_while_stopped(self):
        """
        sendmail -t with the server stopped: the message waits in the drop
        folder and is delivered (Bcc removed, recipients from the headers)
        once the server starts.
        """
        dns, sink = self.dns(), self.sink()
        server = self.server(dns, sink.port)
        server.stop()
        message = (b"From: cron@example.test\nTo: alice@example.test\nBcc: bob@remote.test\n"
                   b"Subject: nightly\n\nall good\n.\nstill body with -i\n")
        result = server.cli("sendmail", "-t", "-i", "-f", "cron@example.test", stdin=message)
        self.assertEqual(result.returncode, 0, result.stderr)
        server.start()
        [local] = server.wait_for_messages("alice@example.test", 1)
        self.assertIn(b"Return-Path: <cron@example.test>\r\n", local)
        self.assertIn(b"\r\n\r\nall good\r\n.\r\nstill body with -i\r\n", local)
        self.assertNotIn(b"Bcc:", local)
        [(data, facts)] = self.received(sink, 1)
        self.assertEqual(facts["rcpt_to"], ["bob@remote.test"])
        self.assertNotIn(b"Bcc:", data)
