"""
End-to-end: operating the appliance — status, signals, refusing to start
twice or on an unusable data folder.
"""

import os
import signal
import smtplib
import socket

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import ServerProcess, wait_until


class StatusTests(SynchronousTestCase):
    def test_status(self):
        """
        status reports the running server's sessions, queue and recent
        deliveries; with no server it exits 3.
        """
        server = ServerProcess(self, users={"alice@example.test": "a"}).start()
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30)
        client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: s\r\n\r\nx\r\n")
        server.wait_for_messages("alice@example.test", 1)
        idle = socket.create_connection(("127.0.0.1", server.ports["pop3"]))
        self.addCleanup(idle.close)

        def report():
            result = server.cli("status")
            text = result.stdout.decode()
            ok = result.returncode == 0 and "smtp 1" in text and "pop3 1" in text and "1 delivered" in text
            return ok and text

        text = wait_until(report, 15, what="status showing the sessions")
        self.assertIn(f"running: pid {server.process.pid}, up ", text)
        self.assertIn("sessions: smtp 1, submission 0, pop3 1", text)
        self.assertIn("queue: 0 message(s)", text)
        self.assertIn("last hour: 1 delivered, 0 failed", text)
        client.quit()
        server.stop()
        result = server.cli("status")
        self.assertEqual(result.returncode, 3)
        self.assertEqual(result.stderr.decode().count("\n"), 1)


class LifecycleTests(SynchronousTestCase):
    def test_second_server_refused(self):
        """
        A second server on the same data folder refuses to start, with one
        line.
        """
        first = ServerProcess(self, services=("smtp",)).start()
        second = ServerProcess(self, services=("smtp",),
                               config_text=open(first.config_path).read().replace(
                                   str(first.ports["smtp"]), "0").replace('data_dir = "var"',
                                                                          f'data_dir = "{first.data_dir}"'))
        status, output = second.run_to_exit()
        self.assertEqual(status, 1, output)
        self.assertEqual(output.strip().splitlines(),
                         [f"mailappliance: data folder {first.data_dir}: another mailappliance server is using it"])

    def test_unwritable_data_folder(self):
        """
        A data folder that cannot be created stops start-up with one line.
        """
        server = ServerProcess(self, services=("smtp",))
        blocker = os.path.join(server.base, "var")
        with open(blocker, "w") as f:
            f.write("a file, not a folder")
        status, output = server.run_to_exit()
        self.assertEqual(status, 1, output)
        self.assertEqual(len(output.strip().splitlines()), 1, output)
        self.assertIn("data folder", output)
        self.assertNotIn("Traceback", output)

    def test_sighup_reloads(self):
        """
        SIGHUP reloads the users file at once, and the configuration (saying
        in the log what changed and what needs a restart).
        """
        server = ServerProcess(self, services=("pop3",), users={"alice@example.test": "a"}).start()
        with open(os.path.join(server.base, "users"), "a") as f:
            f.write("bob@example.test:{PLAIN}b\n")
        with open(server.config_path, "a") as f:
            f.write('\n[submission]\nlisten = []\n')
        server.signal(signal.SIGHUP)
        server.wait_for_log("event=reload reason=SIGHUP")
        # A new service needs a restart, and the log says so.
        server.wait_for_log("key=[submission] status=needs-restart")
        import poplib

        def login():
            client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
            try:
                client.user("bob@example.test")
                client.pass_("b")
                client.quit()
                return True
            except poplib.error_proto:
                client.close()
                return False

        wait_until(login, 10, what="bob's login after the reload")


class ShutdownTests(SynchronousTestCase):
    def test_sigterm_finishes_transactions(self):
        """
        SIGTERM: idle sessions get 421 4.3.2 at once, new connections are
        refused, a transaction in flight may finish (its message gets its
        250 and is delivered after the restart), then the server exits.
        """
        from tests.e2e.test_smtp_inbound import RawSMTP

        server = ServerProcess(self, services=("smtp",), users={"alice@example.test": "a"}).start()
        port = server.ports["smtp"]
        idle = RawSMTP(port)
        busy = RawSMTP(port)
        busy.send(b"EHLO x\r\nMAIL FROM:<z@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertEqual([busy.reply()[:3] for _ in range(4)], [b"250", b"250", b"250", b"354"])
        busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        server.signal(signal.SIGTERM)
        self.assertEqual(idle.reply()[:9], b"421 4.3.2")
        wait_until(lambda: _refused(port), 10, what="the listener to close")
        busy.send(b"second half\r\n.\r\n")
        self.assertEqual(busy.reply()[:3], b"250")
        self.assertEqual(busy.reply()[:9], b"421 4.3.2")
        server.process.wait(20)
        self.assertIn("event=shutdown status=done", server.log())
        server.start()
        [data] = server.wait_for_messages("alice@example.test", 1)
        self.assertIn(b"first half\r\nsecond half\r\n", data)


    def test_sigterm_drops_unfinished_data(self):
        """
        A large message still arriving when the drain's grace period ends
        gets 421 4.3.2 and is dropped: nothing is delivered and its partial
        file (streamed into the Maildir's tmp/) is gone when the server has
        exited.
        """
        from tests.e2e.test_smtp_inbound import RawSMTP

        server = ServerProcess(self, services=("smtp",), users={"alice@example.test": "a"}).start()
        busy = RawSMTP(server.ports["smtp"])
        busy.send(b"EHLO x\r\nMAIL FROM:<z@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertEqual([busy.reply()[:3] for _ in range(4)], [b"250", b"250", b"250", b"354"])
        busy.send(b"Subject: big\r\n\r\n" + (b"x" * 500 + b"\r\n") * 800)
        tmp = os.path.join(server.maildir("alice@example.test"), "tmp")
        wait_until(lambda: os.path.isdir(tmp) and os.listdir(tmp), 10, what="the partial file in tmp/")
        server.signal(signal.SIGTERM)
        self.assertEqual(busy.reply()[:9], b"421 4.3.2")
        server.process.wait(30)
        self.assertEqual(os.listdir(tmp), [])
        self.assertEqual(os.listdir(os.path.join(server.maildir("alice@example.test"), "new")), [])
        self.assertIn('reason="connection dropped at shutdown during DATA"', server.log())

    def test_second_sigterm_harmless(self):
        """
        A second SIGTERM while a transaction drains (Ctrl-C twice,
        timeout(1) signalling the process and its group) is logged once at
        info and ignored: no ReactorNotRunning traceback, and the
        transaction still finishes.
        """
        from tests.e2e.test_smtp_inbound import RawSMTP

        server = ServerProcess(self, services=("smtp",), users={"alice@example.test": "a"}).start()
        busy = RawSMTP(server.ports["smtp"])
        busy.send(b"EHLO x\r\nMAIL FROM:<z@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertEqual([busy.reply()[:3] for _ in range(4)], [b"250", b"250", b"250", b"354"])
        busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        server.signal(signal.SIGTERM)
        server.wait_for_log("event=shutdown status=draining")
        server.signal(signal.SIGTERM)
        server.wait_for_log('event=shutdown signal=SIGTERM status=ignored reason="already shutting down"')
        server.signal(signal.SIGINT)
        busy.send(b"second half\r\n.\r\n")
        self.assertEqual(busy.reply()[:3], b"250")
        server.process.wait(20)
        log = server.log()
        self.assertIn("event=shutdown status=done", log)
        self.assertEqual(log.count("status=ignored"), 1, log)
        self.assertNotIn("ReactorNotRunning", log)
        self.assertNotIn("Traceback", log)


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


class CorruptStateTests(SynchronousTestCase):
    def test_corrupt_queue_file(self):
        """
        An unreadable envelope is moved to queue/corrupt/ with a log line;
        the server starts and serves.
        """
        server = ServerProcess(self, services=("smtp",), users={"alice@example.test": "a"}).start()
        server.stop()
        messages = os.path.join(server.data_dir, "queue", "messages")
        with open(os.path.join(messages, "0000000000000000.env"), "wb") as f:
            f.write(b'{"version": 1, "queue_id": "broken')
        with open(os.path.join(messages, "0000000000000000"), "wb") as f:
            f.write(b"Subject: x\r\n\r\nx\r\n")
        server.start()
        server.wait_for_log("status=corrupt")
        corrupt = sorted(os.listdir(os.path.join(server.data_dir, "queue", "corrupt")))
        self.assertEqual(corrupt, ["0000000000000000", "0000000000000000.env"])
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20)
        client.sendmail("z@remote.test", ["alice@example.test"], b"Subject: ok\r\n\r\nok\r\n")
        client.quit()
        server.wait_for_messages("alice@example.test", 1)

    def test_bad_users_edit_keeps_last_good(self):
        """
        A users file edited into a bad state keeps the last good version in
        force and logs the line number.
        """
        import poplib

        server = ServerProcess(self, services=("pop3",), users={"alice@example.test": "a"}).start()
        users = os.path.join(server.base, "users")
        with open(users, "a") as f:
            f.write("this is not a user line\n")
        server.wait_for_log(f"users file={users} line=2 status=refused")
        client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
        client.user("alice@example.test")
        client.pass_("a")
        client.quit()
