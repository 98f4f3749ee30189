"""
End-to-end: the real twistd under hostile input, floods and a full disk.
The server must keep serving, never lose or expose anything, and say
precisely why it refuses.
"""

import os
import poplib
import random
import smtplib
import socket
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.e2e.harness import ServerProcess, wait_until

USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}


def connect_from(port, source):
    """
    A TCP connection to 127.0.0.1:port from the loopback address C{source}
    (127.0.0.0/8 is all ours, so each test client can be its own "host").
    """
    return socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


class HostileInputTests(SynchronousTestCase):
    def test_random_bytes_at_every_port(self):
        """
        Random bytes (NULs, bare CRs, endless lines, TLS garbage) at every
        port never bring the server down: afterwards every port still greets.
        """
        server = ServerProcess(self, users=USERS, tls=True).start()
        rng = random.Random(1234)
        for name, port in server.ports.items():
            for size in (1, 100, 70000, 1024 * 1024):
                s = socket.create_connection(("127.0.0.1", port), timeout=20)
                try:
                    s.sendall(bytes(rng.getrandbits(8) for _ in range(min(size, 4096))) * max(1, size // 4096))
                except OSError:
                    pass  # the server may rightly hang up on garbage
                s.close()
        for name, port in server.ports.items():
            if name.endswith("_tls"):
                continue
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            greeting = read_line(s)
            s.close()
            self.assertTrue(greeting[:4] in (b"220 ", b"+OK "), (name, greeting))
        self.assertIsNone(server.process.poll())
        self.assertNotIn("Unhandled Error", server.log())

    def test_path_like_addresses(self):
        """
        Addresses that look like paths are refused and nothing is created
        outside the data folder's mail tree.
        """
        server = ServerProcess(self, services=("smtp",), users=USERS).start()
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20)
        client.ehlo("x")
        client.mail("z@remote.test")
        for address in ('"../x"@example.test', "a/b@example.test", '"../../etc"@example.test',
                        "x" * 300 + "@example.test", "..@example.test", '"a\\/b"@example.test'):
            code, _ = client.rcpt(address)
            self.assertGreaterEqual(code, 500, address)
        code, text = client.docmd("RCPT TO:<a\x00b@example.test>")
        self.assertGreaterEqual(code, 500)
        client.quit()
        mail = os.path.join(server.data_dir, "mail")
        created = [os.path.join(root, d) for root, dirs, _ in os.walk(mail) for d in dirs]
        self.assertEqual(created, [])
        self.assertEqual(sorted(os.listdir(server.base)),
                         sorted(["aliases", "mailappliance.toml", "twistd.log", "users", "var"]))


class FloodTests(SynchronousTestCase):
    def start(self, idle_timeout="2s", **options):
        smtp = (f'max_connections = 8\nmax_connections_per_ip = 3\nidle_timeout = "{idle_timeout}"\n'
                + options.get("smtp", ""))
        return ServerProcess(self, services=("smtp", "pop3"), users=USERS,
                             options={"smtp": smtp, "pop3": 'idle_timeout = "2s"'}).start()

    def test_slowloris_and_flood(self):
        """
        Idle connections fill the per-address cap (then 421 4.7.0 for that
        address only), more addresses fill the service's cap (421 for
        everyone); the idle time-out frees them all, and service resumes.
        """
        # Long enough that the flood below is refused before the held
        # connections time out, even on a slow, busy machine.
        server = self.start(idle_timeout="6s")
        # The start-up probes' sessions must not count against the limits.
        server.wait_sessions_closed()
        port = server.ports["smtp"]
        held = []
        for _ in range(3):
            s = connect_from(port, "127.0.0.2")
            self.assertEqual(read_line(s)[:4], b"220 ")
            held.append(s)
        extra = connect_from(port, "127.0.0.2")
        self.assertEqual(read_line(extra)[:9], b"421 4.7.0")
        extra.close()
        other = connect_from(port, "127.0.0.3")
        self.assertEqual(read_line(other)[:4], b"220 ")
        held.append(other)
        for source in ("127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"):
            s = connect_from(port, source)
            held.append(s)
            read_line(s)
        # Restart every held session's idle timer just before the flood,
        # so that none can time out during it on a slow, busy machine.
        for s in held:
            s.sendall(b"NOOP\r\n")
        self.assertEqual([read_line(s)[:3] for s in held], [b"250"] * len(held))
        flood = [connect_from(port, f"127.0.1.{n}") for n in range(1, 30)]
        refused = [read_line(s)[:9] for s in flood]
        self.assertEqual(set(refused), {b"421 4.7.0"})
        for s in flood:
            s.close()
        # The idle time-out closes every held connection with 421 4.4.2.
        closing = [read_line(s) for s in held]
        self.assertTrue(all(line.startswith(b"421 4.4.2") for line in closing), closing)
        for s in held:
            s.close()

        def greets():
            s = connect_from(port, "127.0.0.2")
            try:
                return read_line(s)[:4] == b"220 "
            finally:
                s.close()

        wait_until(greets, 10, what="service to resume")

    def test_password_guessing(self):
        """
        A guessing run is slowed down and cut off, while a user from another
        address logs in at once (POP3 and SMTP AUTH).
        """
        server = ServerProcess(self, services=("pop3", "submission"), users=USERS).start()
        pop3 = server.ports["pop3"]
        attacker = connect_from(pop3, "127.0.0.9")
        read_line(attacker)
        times = []
        for guess in range(3):
            attacker.sendall(b"USER alice@example.test\r\n")
            read_line(attacker)
            started = time.monotonic()
            attacker.sendall(b"PASS guess%d\r\n" % guess)
            reply = read_line(attacker)
            times.append(time.monotonic() - started)
            self.assertTrue(reply.startswith(b"-ERR [AUTH]"), reply)
            # Meanwhile the real user, from elsewhere, is not slowed down.
            started = time.monotonic()
            user = poplib.POP3("127.0.0.1", pop3, timeout=20)
            user.user("bob@example.test")
            user.pass_("bob-pw")
            user.quit()
            self.assertLess(time.monotonic() - started, 0.9)
        self.assertGreater(times[1], times[0])
        self.assertGreaterEqual(times[2], 1.5)
        self.assertEqual(read_line(attacker), b"")  # cut off after three failures
        attacker.close()

        submission = server.ports["submission"]
        attacker = smtplib.SMTP(timeout=30, source_address=("127.0.0.10", 0))
        attacker.connect("127.0.0.1", submission)
        attacker.ehlo("x")
        codes = []
        for guess in range(3):
            try:
                codes.append(attacker.docmd("AUTH", "PLAIN " + _plain("alice@example.test", f"guess{guess}"))[0])
            except smtplib.SMTPServerDisconnected:
                codes.append("closed")
                break
        self.assertEqual(codes[:3], [535, 535, 535])
        self.assertEqual(attacker.docmd("NOOP")[0] if _alive(attacker) else 421, 421)
        user = smtplib.SMTP("127.0.0.1", submission, timeout=20)
        started = time.monotonic()
        user.login("bob@example.test", "bob-pw")
        self.assertLess(time.monotonic() - started, 0.9)
        user.quit()


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _flood_without_reading(port, source, command, seconds=3.0, total=3_000_000):
    """
    Connect from C{source} with a small receive buffer, read the greeting,
    then send C{command} repeatedly (up to C{total} bytes, for at most
    C{seconds}) without reading a single reply.

    @return: the socket (still open) and the bytes the server took.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((source, 0))
    s.settimeout(20)
    s.connect(("127.0.0.1", port))
    read_line(s)
    s.setblocking(False)
    block = command * (65536 // len(command))
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < total and time.monotonic() < deadline:
        try:
            sent += s.send(block)
        except BlockingIOError:
            # The server stopped reading: what it does not read, it does
            # not answer.
            time.sleep(0.01)
    return s, sent


def _closed_by_server(s):
    s.setblocking(True)
    s.settimeout(0.2)
    try:
        while True:
            if not s.recv(65536):
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


class LoginStormTests(SynchronousTestCase):
    def test_wrong_passwords_do_not_stall_mail(self):
        """
        A burst of POP3 logins that never wait for their answers (each
        costs an argon2id check) does not hold up mail: a message sent
        during it gets its 250 at once, the checks beyond the bounded queue
        are refused as busy, and every attempt is logged.
        """
        server = ServerProcess(self, services=("smtp", "pop3"), users=USERS,
                               options={"pop3": 'idle_timeout = "5s"'}).start()
        attempts = 120
        for n in range(attempts):
            s = connect_from(server.ports["pop3"], f"127.0.2.{n % 200 + 1}")
            s.sendall(b"USER ghost%d@example.test\r\nPASS wrong\r\n" % n)
            s.close()
        start = time.monotonic()
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60)
        client.sendmail("z@remote.test", ["alice@example.test"], b"Subject: during the storm\r\n\r\nx\r\n")
        elapsed = time.monotonic() - start
        client.quit()
        self.assertLess(elapsed, 4, "the 250 waited for the password checks")
        log = wait_until(lambda: (server.log().count("event=login status=")) >= attempts and server.log(), 60,
                         what="every login attempt logged")
        self.assertGreater(log.count("event=login status=busy"), 0)
        self.assertEqual(log.count("event=login status=busy") + log.count("event=login status=failed"), attempts)


class NonReadingClientTests(SynchronousTestCase):
    def test_clients_that_do_not_read(self):
        """
        Clients that send commands but never read the replies (cheap
        commands with large replies: POP3 CAPA, SMTP EHLO) do not make the
        server buffer the replies (its memory stays about where it was);
        they, and clients that never do their TLS handshake (implicit TLS,
        STLS, STARTTLS), are closed at the idle time-out plus at most
        mailappliance.flow.CLOSE_TIMEOUT, so their places in the connection
        limits are freed and the service goes on.
        """
        server = ServerProcess(
            self, services=("smtp", "pop3"), users=USERS, tls=True,
            options={"smtp": 'max_connections_per_ip = 3\nidle_timeout = "2s"', "pop3": 'idle_timeout = "2s"'},
        ).start()
        pid = server.process.pid
        before = _rss_kib(pid)
        held = []
        for port, command in ((server.ports["pop3"], b"CAPA\r\n"), (server.ports["smtp"], b"EHLO x\r\n")):
            s, sent = _flood_without_reading(port, "127.0.0.2", command)
            held.append(s)
            self.assertGreater(sent, 100_000)
        # The server may still be working through what it took: watch its
        # memory for a while.
        peak = before
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            peak = max(peak, _rss_kib(pid))
            time.sleep(0.05)
        grown = peak - before
        self.assertLess(grown, 30 * 1024, f"the server grew by {grown} KiB")
        for name in ("pop3_tls", "smtp_tls"):
            held.append(connect_from(server.ports[name], "127.0.0.3"))
        stls = connect_from(server.ports["pop3"], "127.0.0.3")
        read_line(stls)
        stls.sendall(b"STLS\r\n")
        self.assertEqual(read_line(stls)[:3], b"+OK")
        starttls = connect_from(server.ports["smtp"], "127.0.0.3")
        read_line(starttls)
        starttls.sendall(b"STARTTLS\r\n")
        self.assertEqual(read_line(starttls)[:3], b"220")
        held += [stls, starttls]
        start = time.monotonic()
        wait_until(lambda: all(_closed_by_server(s) for s in held), 30, what="the server to close them all")
        self.assertLess(time.monotonic() - start, 25)
        for s in held:
            s.close()
        # All their places are free: three more from the same address.
        fresh = [connect_from(server.ports["smtp"], "127.0.0.3") for _ in range(3)]
        self.assertEqual([read_line(s)[:4] for s in fresh], [b"220 "] * 3)
        for s in fresh:
            s.close()
        self.assertIsNone(server.process.poll())
        self.assertNotIn("Traceback", server.log())


def _plain(user, password):
    import base64

    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


def _alive(client):
    return client.sock is not None


class FullDiskTests(SynchronousTestCase):
    def mount_tmpfs(self, path, size):
        if os.geteuid() != 0:
            raise SkipTest("needs root to mount a tmpfs")
        os.makedirs(path)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True)
        if mounted.returncode != 0:
            raise SkipTest(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", path])

    def send_when_room(self, client, sender, recipients, message):
        # The server sees the room again at its next look at the free
        # space (every few seconds); until then MAIL SIZE= gets 452.
        def room():
            code = client.mail(sender, [f"SIZE={len(message)}"])[0]
            if code != 250:
                client.rset()
            return code == 250

        wait_until(room, 15, what="room for the message")
        for recipient in recipients:
            self.assertEqual(client.rcpt(recipient)[0], 250)
        self.assertEqual(client.data(message)[0], 250)

    def fill(self, path):
        # Unbuffered, so that no write is left to fail again at close.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        finally:
            os.close(fd)

    def test_local_delivery_expires(self):
        """
        A local delivery that keeps failing temporarily (the mail folder's
        disk is full) is retried with the relay's backoff and, after
        max_queue_lifetime, fails with 4.4.7 and bounces to the sender.
        """
        server = ServerProcess(self, services=("smtp",), users=USERS, extra=(
            '[relay]\ndns_servers = ["127.0.0.1:9"]\nretry_initial = "1s"\nretry_max = "2s"\n'
            'max_queue_lifetime = "4s"\ndelay_warning_after = "0s"\n'))
        self.mount_tmpfs(os.path.join(server.data_dir, "mail"), "1m")
        server.start()
        self.fill(os.path.join(server.data_dir, "mail", "filler"))
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30)
        client.sendmail("z@remote.test", ["alice@example.test"], b"Subject: x\r\n\r\nx\r\n")
        client.quit()
        log = server.wait_for_log("to=<alice@example.test> status=failed", timeout=20)
        self.assertIn("message expired after 4s in the queue", log)
        self.assertGreaterEqual(log.count("to=<alice@example.test> status=deferred"), 2)
        # The bounce is queued for the (remote) sender.
        self.assertRegex(server.wait_for_log(" status=bounced dsn="), r"status=bounced dsn=\w+ to=<z@remote\.test>")

    def test_large_message_queued_when_maildir_full(self):
        """
        A large message (streamed into the Maildir as it arrives) for a
        mailbox whose disk is full is queued instead of refused, and
        delivered once there is room again.
        """
        server = ServerProcess(self, services=("smtp",), users=USERS, extra=(
            '[relay]\ndns_servers = ["127.0.0.1:9"]\nretry_initial = "1s"\nretry_max = "1s"\n'))
        self.mount_tmpfs(os.path.join(server.data_dir, "mail"), "1m")
        server.start()
        filler = os.path.join(server.data_dir, "mail", "filler")
        self.fill(filler)
        message = b"Subject: big\r\n\r\n" + (b"z" * 500 + b"\r\n") * 600
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30)
        client.sendmail("z@remote.test", ["alice@example.test"], message)
        client.quit()
        server.wait_for_log("status=queueing reason=")
        server.wait_for_log("to=<alice@example.test> status=deferred")
        os.unlink(filler)
        [data] = server.wait_for_messages("alice@example.test", 1)
        self.assertTrue(data.endswith(message))

    def test_queue_full_no_duplicates(self):
        """
        A message for a local and a remote recipient, refused with 452
        because the queue is full (a tmpfs as the queue folder): the local
        copy delivered before the queue write is taken back, so the
        client's retries deliver it once, when the queue has room again.
        """
        server = ServerProcess(self, services=("smtp",), users=USERS)
        self.mount_tmpfs(os.path.join(server.data_dir, "queue"), "1m")
        server.start()
        filler = os.path.join(server.data_dir, "queue", "filler")
        self.fill(filler)
        message = b"Subject: mixed\r\n\r\n" + b"y" * 2000 + b"\r\n"
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30)
        client.ehlo("x")
        for _ in range(3):
            # Without SIZE (with it, MAIL is refused at once).
            self.assertEqual(client.mail("z@remote.test")[0], 250)
            self.assertEqual(client.rcpt("alice@example.test")[0], 250)
            self.assertEqual(client.rcpt("far@remote.test")[0], 250)
            self.assertEqual(client.data(message)[0], 452)
            client.rset()
        self.assertEqual(server.maildir_files("alice@example.test"), [])
        self.assertEqual(server.log().count("to=<alice@example.test> status=withdrawn"), 3)
        os.unlink(filler)
        self.send_when_room(client, "z@remote.test", ["alice@example.test", "far@remote.test"], message)
        client.quit()
        [data] = server.wait_for_messages("alice@example.test", 1)
        self.assertTrue(data.endswith(message))

    def test_full_disk(self):
        """
        On a full disk (a small tmpfs as the data folder) SMTP answers
        452 4.3.1, the session goes on, the failure is logged once for the
        episode, and service resumes by itself when space returns.
        """
        server = ServerProcess(self, services=("smtp",), users=USERS)
        self.mount_tmpfs(server.data_dir, "4m")
        server.start()
        filler = os.path.join(server.data_dir, "filler")
        self.fill(filler)
        message = b"Subject: big\r\n\r\n" + b"y" * 200000 + b"\r\n"
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30)
        # A declared size that cannot fit is refused at MAIL, once the
        # server has looked at the free space (every few seconds).
        client.ehlo("x")

        def refused_at_mail():
            code = client.mail("z@remote.test", ["SIZE=200000"])[0]
            client.rset()
            return code == 452

        wait_until(refused_at_mail, 15, what="452 at MAIL SIZE=200000")
        for _ in range(2):
            # Without SIZE, the lack of space shows when the data is stored.
            self.assertEqual(client.mail("z@remote.test")[0], 250)
            self.assertEqual(client.rcpt("alice@example.test")[0], 250)
            code, text = client.data(message)
            self.assertEqual((code, text[:5]), (452, b"4.3.1"))
            client.rset()
        self.assertEqual(client.noop()[0], 250)
        os.unlink(filler)
        self.send_when_room(client, "z@remote.test", ["alice@example.test"], message)
        client.quit()
        [data] = server.wait_for_messages("alice@example.test", 1)
        self.assertTrue(data.endswith(message))
        log = server.log()
        self.assertEqual(log.count("event=error what=spool status=failing"), 1)
        self.assertIn("event=recovered what=spool failures=2", log)
        self.assertEqual(os.listdir(os.path.join(server.data_dir, "queue", "tmp")), [])
