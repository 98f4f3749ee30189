"""
End-to-end: the real C{twistd -n mailappliance} starts with a generated
configuration, says what it serves, and refuses a bad configuration with a
one-line error.
"""

import os
import socket
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import ServerProcess, free_port, wait_until


class StartupTests(SynchronousTestCase):
    def taken_port(self) -> int:
        """
        A loopback port that something else listens on (for this test).
        """
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        return blocker.getsockname()[1]

    def test_starts_and_logs_services(self):
        """
        Every configured listener accepts connections and the log names each
        service with its endpoint.
        """
        server = ServerProcess(self).start()
        for name in ("smtp", "submission", "pop3"):
            port = server.ports[name]
            server.wait_for_log(f"service={name} listen=tcp:{port}:interface=127.0.0.1")
        with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10) as s:
            greeting = s.makefile("rb").readline()
        self.assertTrue(greeting.startswith(b"220 "), greeting)
        self.assertIn(b"mail.example.test", greeting)
        # twistd re-raises SIGTERM after a clean shutdown, so the exit status
        # says "terminated by SIGTERM" (-15), not 0.
        self.assertIn(server.stop(), (0, -15))
        self.assertIn("Main loop terminated.", server.log())
        self.assertNotIn("Traceback", server.log())

    def test_creates_data_folder(self):
        """
        The data folder and its queue and mail folders are created.
        """
        server = ServerProcess(self, services=("smtp",)).start()
        for sub in ("queue", "mail"):
            self.assertTrue(os.path.isdir(os.path.join(server.data_dir, sub)), sub)

    def test_bad_config(self):
        """
        A configuration mistake: exit status 1, one line naming the file,
        line and key, no traceback.
        """
        server = ServerProcess(self, config_text='[server]\nhostname = "a.test"\n[smtp]\nmax_recipients = "many"\n')
        status, output = server.run_to_exit()
        self.assertEqual(status, 1, output)
        lines = [line for line in output.splitlines() if line.strip()]
        self.assertEqual(
            lines,
            [f"mailappliance: {server.config_path}:4: smtp.max_recipients: expected an integer, got 'many'"],
        )

    def test_unknown_key(self):
        """
        Unknown keys are refused at start-up.
        """
        server = ServerProcess(self, config_text='[server]\nhostname = "a.test"\n\n[pop3]\nlisten_on = []\n')
        status, output = server.run_to_exit()
        self.assertEqual(status, 1, output)
        self.assertIn(f"{server.config_path}:5: pop3.listen_on: unknown key", output)
        self.assertNotIn("Traceback", output)

    def test_bad_users_file(self):
        """
        A malformed users file stops start-up with its file and line.
        """
        server = ServerProcess(self, services=("smtp",))
        with open(os.path.join(server.base, "users"), "w") as f:
            f.write("# users\nalice@example.test:{PLAIN}x\nnot an address:{PLAIN}y\n")
        status, output = server.run_to_exit()
        self.assertEqual(status, 1, output)
        self.assertIn(f"{os.path.join(server.base, 'users')}:3:", output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(len([line for line in output.splitlines() if line.strip()]), 1, output)

    def test_empty_plain_password(self):
        """
        A users-file line with an empty C{{PLAIN}} password (anyone could
        log in with an empty password) stops start-up with its file and
        line.
        """
        server = ServerProcess(self, services=("smtp",))
        with open(os.path.join(server.base, "users"), "w") as f:
            f.write("alice@example.test:{PLAIN}x\nopen@example.test:{PLAIN}\n")
        status, output = server.run_to_exit()
        self.assertEqual(status, 1, output)
        self.assertIn(f"{os.path.join(server.base, 'users')}:2: open@example.test: empty {{PLAIN}} password", output)
        self.assertNotIn("Traceback", output)

    def test_same_port_twice(self):
        """
        Two services on one port: a one-line configuration error naming
        both keys, before anything listens.
        """
        port = free_port()
        listen = f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
        server = ServerProcess(self, config_text=f'[server]\nhostname = "a.test"\n[smtp]\n{listen}[pop3]\n{listen}')
        status, output = server.run_to_exit()
        self.assertEqual(status, 1, output)
        self.assertIn(f"pop3.listen: port {port} (tcp:{port}:interface=127.0.0.1) is also in smtp.listen", output)
        self.assertNotIn("Traceback", output)

    def test_port_in_use(self):
        """
        A listener that cannot bind stops start-up with a one-line error.
        """
        port = self.taken_port()
        server = ServerProcess(
            self, config_text=f'[server]\nhostname = "a.test"\n[smtp]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
        )
        status, output = server.run_to_exit()
        self.assertNotEqual(status, 0, output)
        self.assertIn(f"tcp:{port}:interface=127.0.0.1", output)
        self.assertNotIn("Traceback", output)

    def test_systemd_socket_not_passed(self):
        """
        A systemd: listener whose socket systemd did not pass (here: not
        started by systemd at all) stops start-up with one line naming the
        file, the key and the endpoint, no traceback.
        """
        server = ServerProcess(
            self, config_text='[server]\nhostname = "a.test"\n[smtp]\nlisten = ["systemd:domain=INET:index=0"]\n'
        )
        status, output = server.run_to_exit()
        self.assertEqual(status, 1, output)
        self.assertIn(f"mailappliance: {server.config_path}: smtp.listen: cannot use systemd:domain=INET:index=0: "
                      "systemd passed no socket with index 0 (is the server started by its socket unit?)\n", output)
        self.assertNotIn("Traceback", output)

    def test_port_in_use_daemon(self):
        """
        Without C{-n} (a daemon), a listener that cannot bind makes twistd
        exit 1 with the reason, and removes its pid file (it used to wait
        for ever for word from the daemon).
        """
        port = self.taken_port()
        server = ServerProcess(
            self, config_text=f'[server]\nhostname = "a.test"\n[smtp]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
        )
        pidfile = os.path.join(server.base, "twistd.pid")
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", f"--pidfile={pidfile}",
                   "--logfile", os.path.join(server.base, "daemon.log"), "mailappliance", "--config",
                   server.config_path]
        result = subprocess.run(command, cwd=server.base, env=server.env(), stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=30)
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertEqual(result.returncode, 1, output)
        self.assertIn("An error has occurred", output)
        self.assertIn(f"tcp:{port}", output)
        # twistd's daemon removes the pid file just after telling its
        # parent, which may exit first.
        wait_until(lambda: not os.path.exists(pidfile), 10, what="the pid file to be removed")

    def test_config_from_environment(self):
        """
        Without C{--config}, twistd uses the file named by
        C{$MAILAPPLIANCE_CONFIG}, as the admin command line does.
        """
        server = ServerProcess(self, config_text='[server]\nhostname = "a.test"\nbogus = 1\n')
        command = [part for part in server.command() if part not in ("--config", server.config_path)]
        env = dict(server.env(), MAILAPPLIANCE_CONFIG=server.config_path)
        result = subprocess.run(command, cwd=server.base, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=30)
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertEqual(result.returncode, 1, output)
        self.assertIn(f"{server.config_path}:3: server.bogus: unknown key", output)
