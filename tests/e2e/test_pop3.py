"""
End-to-end: POP3 against the real twistd, with poplib and fetchmail.
"""

import os
import poplib
import ssl
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.testing.certificates import write_certificate
from tests.e2e.harness import (
    ServerProcess,
    require_client,
    send_and_half_close,
    wait_until,
)

USER = "alice@example.test"
PASSWORD = "correct horse"

DOTTY = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"
EIGHT_BIT = "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße, ça va? 日本\r\n".encode()


def put_message(server, address, data, name=None):
    """
    Deliver a message file into a Maildir the way the appliance names them.
    """
    maildir = server.maildir(address)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    put_message.counter = getattr(put_message, "counter", 0) + 1
    unique = name or f"{int(time.time())}.M{put_message.counter:06d}P{os.getpid()}Q{put_message.counter}.test"
    path = os.path.join(maildir, "new", f"{unique},S={len(data)},W={len(data)}")
    with open(path, "wb") as f:
        f.write(data)
    return path


def retr_bytes(lines):
    return b"".join(line + b"\r\n" for line in lines)


class POP3Tests(SynchronousTestCase):
    def start(self, **kw):
        kw.setdefault("users", {USER: PASSWORD, "bob@example.test": "bobpw"})
        kw.setdefault("services", ("pop3",))
        return ServerProcess(self, **kw).start()

    def connect(self, server):
        client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=20)
        self.addCleanup(client.close)
        return client

    def test_retrieve_byte_exact(self):
        """
        RETR gives every message byte for byte, dot-lines and 8-bit bodies
        included; STAT and LIST give the sizes as sent.
        """
        server = self.start()
        put_message(server, USER, DOTTY)
        put_message(server, USER, EIGHT_BIT)
        client = self.connect(server)
        client.user(USER)
        client.pass_(PASSWORD)
        self.assertEqual(client.stat(), (2, len(DOTTY) + len(EIGHT_BIT)))
        _, listing, _ = client.list()
        self.assertEqual(listing, [b"1 %d" % len(DOTTY), b"2 %d" % len(EIGHT_BIT)])
        _, lines, _ = client.retr(1)
        self.assertEqual(retr_bytes(lines), DOTTY)
        _, lines, _ = client.retr(2)
        self.assertEqual(retr_bytes(lines), EIGHT_BIT)
        _, lines, _ = client.top(1, 1)
        self.assertEqual(retr_bytes(lines), b"Subject: dots\r\n\r\n.leading dot\r\n")
        client.quit()

    def test_large_message(self):
        """
        A 20 MB message comes back byte-exact.
        """
        server = self.start()
        line = b"0123456789abcdefghijklmnopqrstuvwxyz.ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
        body = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line)) + b".\r\n..\r\n"
        put_message(server, USER, body)
        client = self.connect(server)
        client.user(USER)
        client.pass_(PASSWORD)
        client._shortcmd("RETR 1")
        # Read the raw stream rather than poplib's line list, to compare bytes.
        chunks = []
        while True:
            got = client._getline()[0]
            if got == b".":
                break
            chunks.append(got[1:] if got.startswith(b"..") else got)
        self.assertEqual(b"\r\n".join(chunks) + b"\r\n", body)
        client.quit()

    def test_uidl_stable_and_dele(self):
        """
        UIDL is stable across sessions; DELE takes effect only at QUIT;
        RSET undoes it; retrieved messages move to cur/ with the S flag.
        """
        server = self.start()
        for n in range(3):
            put_message(server, USER, b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n))
        client = self.connect(server)
        client.user(USER)
        client.pass_(PASSWORD)
        _, uids_first, _ = client.uidl()
        client.retr(1)
        client.dele(2)
        self.assertEqual(client.stat()[0], 2)
        client.rset()
        self.assertEqual(client.stat()[0], 3)
        client.dele(3)
        client.quit()
        client = self.connect(server)
        client.user(USER)
        client.pass_(PASSWORD)
        _, uids_second, _ = client.uidl()
        first = dict(u.split() for u in uids_first)
        second = dict(u.split() for u in uids_second)
        self.assertEqual(list(second.values()), [first[b"1"], first[b"2"]])
        self.assertEqual(client.uidl(2), b"+OK 2 " + first[b"2"])
        client.quit()
        cur = os.listdir(os.path.join(server.maildir(USER), "cur"))
        self.assertEqual(len(cur), 1)
        self.assertTrue(cur[0].endswith(":2,S"), cur)

    def test_dropped_connection_deletes_nothing(self):
        """
        DELE without QUIT changes nothing.
        """
        server = self.start()
        put_message(server, USER, b"Subject: x\r\n\r\nx\r\n")
        client = self.connect(server)
        client.user(USER)
        client.pass_(PASSWORD)
        client.dele(1)
        client.close()

        def login():
            # The server learns of the drop a moment later; until then the
            # mailbox is still (rightly) in use.
            again = self.connect(server)
            again.user(USER)
            try:
                again.pass_(PASSWORD)
            except poplib.error_proto as e:
                self.assertIn(b"[IN-USE]", e.args[0])
                again.close()
                return None
            return again

        client = wait_until(login, 10, what="the dropped session's lock to go")
        self.assertEqual(client.stat()[0], 1)
        client.quit()

    def test_pipelined_then_half_closed(self):
        """
        A whole session pipelined in one write, then the write side closed
        (as C{printf ... | nc -N host 110} does): every reply arrives, QUIT's
        included, the deletion is made, and the server closes.
        """
        server = self.start()
        put_message(server, USER, DOTTY)
        put_message(server, USER, EIGHT_BIT)
        received = send_and_half_close(
            server.ports["pop3"], f"USER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nDELE 1\r\nQUIT\r\n".encode())
        replies = received.split(b"\r\n")
        self.assertEqual([r[:3] for r in replies[:6]], [b"+OK"] * 6, received)
        self.assertEqual(replies[5][:7], b"+OK Bye")
        self.assertEqual(len(os.listdir(os.path.join(server.maildir(USER), "new")))
                         + len(os.listdir(os.path.join(server.maildir(USER), "cur"))), 1)

    def test_bad_commands_and_http_end_the_session(self):
        """
        Twenty unknown commands in a row end the session, as an HTTP
        request does at once; the server serves the next client.
        """
        server = self.start()
        received = send_and_half_close(server.ports["pop3"], b"BOGUS\r\n" * 25)
        replies = received.split(b"\r\n")
        self.assertEqual(replies[20], b"-ERR Unknown command; too many bad commands, closing", received)
        self.assertEqual(replies[21:], [b""])
        received = send_and_half_close(server.ports["pop3"], b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(received.split(b"\r\n")[1:], [b"-ERR This is a POP3 server, not HTTP", b""])
        client = self.connect(server)
        client.user(USER)
        client.pass_(PASSWORD)
        client.quit()

    def test_longest_password(self):
        """
        The longest password C{user add} takes (248 bytes) can log in with
        USER/PASS, whose line it fills to the 255-octet limit.
        """
        password = "p" * 248
        server = self.start(users={USER: password})
        self.assertNotEqual(server.cli("user", "passwd", USER, stdin=b"p" * 249 + b"\n").returncode, 0)
        client = self.connect(server)
        client.user(USER)
        self.assertTrue(client.pass_(password).startswith(b"+OK"))
        client.quit()

    def test_in_use(self):
        """
        A second simultaneous login to the same mailbox gets -ERR [IN-USE];
        the lock goes with the first session.
        """
        server = self.start()
        first = self.connect(server)
        first.user(USER)
        first.pass_(PASSWORD)
        second = self.connect(server)
        second.user(USER)
        with self.assertRaises(poplib.error_proto) as cm:
            second.pass_(PASSWORD)
        self.assertTrue(cm.exception.args[0].startswith(b"-ERR [IN-USE]"), cm.exception.args[0])
        first.quit()
        third = self.connect(server)
        third.user(USER)
        third.pass_(PASSWORD)
        third.quit()

    def test_snapshot(self):
        """
        Mail arriving during a session is seen only by the next session.
        """
        server = self.start()
        put_message(server, USER, b"Subject: 1\r\n\r\n1\r\n")
        client = self.connect(server)
        client.user(USER)
        client.pass_(PASSWORD)
        put_message(server, USER, b"Subject: 2\r\n\r\n2\r\n")
        self.assertEqual(client.stat()[0], 1)
        client.quit()
        client = self.connect(server)
        client.user(USER)
        client.pass_(PASSWORD)
        self.assertEqual(client.stat()[0], 2)
        client.quit()

    def test_bad_password(self):
        """
        A wrong password gets -ERR [AUTH]; the right one still works after.
        """
        server = self.start()
        client = self.connect(server)
        client.user(USER)
        with self.assertRaises(poplib.error_proto) as cm:
            client.pass_("wrong")
        self.assertTrue(cm.exception.args[0].startswith(b"-ERR [AUTH]"), cm.exception.args[0])
        client.close()
        client = self.connect(server)
        client.user("bob@example.test")
        client.pass_("bobpw")
        client.quit()

    def test_capa(self):
        server = self.start(tls=True)
        client = self.connect(server)
        capa = client.capa()
        for name in ("TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "STLS"):
            self.assertIn(name, capa)
        self.assertEqual(capa["SASL"], ["PLAIN"])
        client.quit()

    def test_plaintext_refused_untrusted(self):
        """
        From outside trusted_networks, USER/PASS without TLS is refused and
        STLS is the way in.
        """
        server = self.start(tls=True, extra='[smtp]\nlisten = []\ntrusted_networks = ["192.0.2.0/24"]\n')
        put_message(server, USER, DOTTY)
        client = self.connect(server)
        with self.assertRaises(poplib.error_proto) as cm:
            client.user(USER)
            client.pass_(PASSWORD)
        self.assertIn(b"[AUTH]", cm.exception.args[0])
        client.close()
        client = self.connect(server)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.stls(context)
        client.user(USER)
        client.pass_(PASSWORD)
        _, lines, _ = client.retr(1)
        self.assertEqual(retr_bytes(lines), DOTTY)
        client.quit()

    def test_implicit_tls(self):
        """
        The listen_tls port speaks TLS from the first byte.
        """
        server = self.start(tls=True)
        put_message(server, USER, EIGHT_BIT)
        context = ssl.create_default_context(cafile=os.path.join(server.base, "tls", "cert.pem"))
        client = poplib.POP3_SSL("localhost", server.ports["pop3_tls"], context=context, timeout=20)
        self.addCleanup(client.close)
        client.user(USER)
        client.pass_(PASSWORD)
        _, lines, _ = client.retr(1)
        self.assertEqual(retr_bytes(lines), EIGHT_BIT)
        client.quit()
        # The test certificate is for localhost, not for the server's
        # hostname: served, with a warning at start-up.
        self.assertIn("service=tls event=certificate status=warning certificate=", server.log())
        self.assertIn('reason="the certificate is not for mail.example.test (the server\'s hostname)"', server.log())

    def test_no_static_rsa_key_exchange(self):
        """
        TLS 1.2 without forward secrecy (static-RSA key exchange) is
        refused, as Dovecot's default cipher list does; ECDHE works.
        """
        process = ServerProcess(self, users={USER: PASSWORD}, services=("pop3",), tls=True)
        cafile, _ = write_certificate(os.path.join(process.base, "tls"), rsa_key=True)
        server = process.start()
        for ciphers, works in (("AES128-GCM-SHA256:AES256-SHA", False), ("ECDHE-RSA-AES128-GCM-SHA256", True)):
            context = ssl.create_default_context(cafile=cafile)
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(ciphers)
            if works:
                client = poplib.POP3_SSL("localhost", server.ports["pop3_tls"], context=context, timeout=20)
                client.quit()
                continue
            with self.assertRaises(ssl.SSLError):
                poplib.POP3_SSL("localhost", server.ports["pop3_tls"], context=context, timeout=20)

    def test_failed_handshake_logged(self):
        """
        A TLS handshake that fails (here: plain text sent to the implicit
        TLS port) is logged with OpenSSL's reason, for the admin whose
        user cannot connect.
        """
        server = self.start(tls=True, extra='[smtp]\nlisten = []\n')
        send_and_half_close(server.ports["pop3_tls"], b"USER alice\r\n")
        line = server.wait_for_log("service=pop3 event=tls-error")
        self.assertRegex(line, r"service=pop3 event=tls-error peer=127\.0\.0\.1 session=\w+ reason=\"[^\"]+\"")

    def test_auth_plain(self):
        """
        SASL PLAIN (RFC 5034) with an initial response logs in.
        """
        import base64

        server = self.start()
        client = self.connect(server)
        token = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD.encode())
        self.assertTrue(client._shortcmd("AUTH PLAIN " + token.decode()).startswith(b"+OK"))
        self.assertEqual(client.stat(), (0, 0))
        client.quit()

    def test_fetchmail(self):
        """
        fetchmail downloads a mailbox of several messages correctly and
        deletes them.
        """
        fetchmail = require_client(self, "fetchmail")
        server = self.start()
        bodies = [b"Subject: m%d\r\nFrom: x@example.test\r\n\r\nmessage %d\r\n.dot line\r\n" % (n, n) for n in range(5)]
        for body in bodies:
            put_message(server, USER, body)
        out = os.path.join(server.base, "fetched")
        os.makedirs(out)
        rc = os.path.join(server.base, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(
                f'poll 127.0.0.1 protocol POP3 port {server.ports["pop3"]} auth password\n'
                f'  user "{USER}" password "{PASSWORD}" is root here\n'
                f'  nokeep fetchall no rewrite mda "sh -c \'cat > {out}/msg.$$\'"\n'
            )
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=server.base, FETCHMAILHOME=server.base)
        result = subprocess.run(
            [fetchmail, "--nodetach", "--nosyslog", "-f", rc, "--sslproto", "", "--logfile", "/dev/null",
             # Its own lock: as root, fetchmail's default one is system-wide.
             "--pidfile", os.path.join(server.base, "fetchmail.pid")],
            capture_output=True, env=env, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        fetched = []
        for name in os.listdir(out):
            with open(os.path.join(out, name), "rb") as f:
                fetched.append(f.read())
        self.assertEqual(len(fetched), 5, fetched)
        for body in bodies:
            # fetchmail hands the MDA LF line ends and adds its own headers.
            self.assertTrue(any(body.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1] in got for got in fetched))
        self.assertEqual(server.maildir_files(USER), [])
