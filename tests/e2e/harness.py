"""
Run the real C{twistd -n mailappliance} on free loopback ports, for
end-to-end tests with real clients.

L{ServerProcess} writes a configuration into a temporary folder, starts
C{twistd -n mailappliance --config FILE} as a child process
(the same Python, with the source tree under test first on the path), waits
(a bounded poll, never a fixed sleep) until every listener accepts
connections, and stops it on clean-up. Its log is kept for assertions and
shown when start-up fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 30.0
POLL_INTERVAL = 0.02


# Ports free_port has handed out in this process: never handed out twice,
# so two servers of one test run cannot be given the same port (the
# kernel may well pick a port again once it is released).
_handed_out: set[int] = set()
# Starting attempts when a port was taken meanwhile by someone else.
START_ATTEMPTS = 3


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago and that this
    process has not handed out before.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def send_and_half_close(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """
    Connect to C{127.0.0.1:port}, send C{data}, close the write side (as
    C{printf ... | nc -N} does) and read until the server closes.

    @return: everything the server sent, greeting included.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(received)
            received.append(chunk)


def wait_until(predicate, timeout: float = 10.0, interval: float = POLL_INTERVAL, what: str = "condition"):
    """
    Poll C{predicate} until it returns something true, or fail after
    C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def require_client(testcase, name: str) -> str:
    """
    The path of a third-party client program, or skip the test when it is
    missing (fail instead when C{MAILAPPLIANCE_REQUIRE_CLIENTS} is set, as
    in CI, which installs them).
    """
    path = shutil.which(name)
    if path is None:
        if os.environ.get("MAILAPPLIANCE_REQUIRE_CLIENTS"):
            testcase.fail(f"{name} is not installed (CI installs it with apt-get)")
        from twisted.trial.unittest import SkipTest

        raise SkipTest(f"{name} is not installed")
    return path


class HelperProcess:
    """
    A helper server run as a child process that prints C{READY <port>} once
    it listens (the test DNS server, the SMTP sink).
    """

    def __init__(self, testcase, command, name: str) -> None:
        """
        @param command: a callable from the port to listen on (0 for any)
            to the command line.
        """
        self.testcase = testcase
        self.command = command
        self.name = name
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self, port: int | None = None) -> HelperProcess:
        command = self.command(port or 0)
        env = dict(os.environ)
        env["PYTHONPATH"] = SOURCE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=SOURCE_ROOT, env=env)
        self.testcase.addCleanup(self.stop)
        line = self.process.stdout.readline().decode("utf-8", "replace")
        if not line.startswith("READY "):
            rest = self.process.stdout.read().decode("utf-8", "replace") if self.process.poll() is not None else ""
            raise AssertionError(f"{self.name} did not start: {line}{rest}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()


class ServerProcess:
    """
    One running mailappliance.

    @ivar ports: service name -> port (C{smtp}, C{submission}, C{pop3},
        and C{smtp_tls}, C{submission_tls}, C{pop3_tls} when TLS is on).
    Keyword arguments: C{services} to run (each on a free port), C{users}
    (address to plain-text password), C{aliases} (the file's text), C{tls}
    (a self-signed certificate and a C{listen_tls} port per service),
    C{options} (service name to extra lines for its section), C{extra}
    (text appended to the configuration), or a whole C{config_text}.

    @ivar base: the temporary folder holding the configuration, the users
        and aliases files, and C{var/}.
    """

    def __init__(self, testcase, services=("smtp", "submission", "pop3"), local_domains=("example.test",),
                 extra: str = "", users: dict[str, str] | None = None, aliases: str = "", tls: bool = False,
                 hostname: str = "mail.example.test", config_text: str | None = None,
                 options: dict[str, str] | None = None, env: dict[str, str] | None = None) -> None:
        self.testcase = testcase
        self.base = os.path.abspath(testcase.mktemp())
        os.makedirs(self.base)
        self.data_dir = os.path.join(self.base, "var")
        self.config_path = os.path.join(self.base, "mailappliance.toml")
        self.log_path = os.path.join(self.base, "twistd.log")
        self.ports: dict[str, int] = {}
        # Port to the number of start-up probes that connected to it.
        self._probes: dict[int, int] = {}
        self.process: subprocess.Popen | None = None
        self.hostname = hostname
        self.options = options or {}
        self.extra_env = env or {}
        # Only a configuration made here may have its ports changed.
        self._own_ports = config_text is None
        self._started = False
        if config_text is None:
            config_text = self._config(services, local_domains, extra, tls)
        with open(self.config_path, "w") as f:
            f.write(config_text)
        with open(os.path.join(self.base, "users"), "w") as f:
            for address, password in (users or {}).items():
                f.write(f"{address}:{{PLAIN}}{password}\n")
        with open(os.path.join(self.base, "aliases"), "w") as f:
            f.write(aliases)

    def _config(self, services, local_domains, extra, tls) -> str:
        domains = ", ".join(f'"{d}"' for d in local_domains)
        lines = [
            "[server]",
            f'hostname = "{self.hostname}"',
            'data_dir = "var"',
            f"local_domains = [{domains}]",
            self.options.get("server", ""),
            "",
        ]
        if tls:
            from mailappliance.testing import write_certificate

            write_certificate(os.path.join(self.base, "tls"))
            lines += ["[tls]", 'certificate = "tls/cert.pem"', 'key = "tls/key.pem"', ""]
        for service in services:
            port = self.ports[service] = free_port()
            lines += [f"[{service}]", f'listen = ["tcp:{port}:interface=127.0.0.1"]']
            if tls:
                tls_port = self.ports[f"{service}_tls"] = free_port()
                lines.append(f'listen_tls = ["tcp:{tls_port}:interface=127.0.0.1"]')
            if service in self.options:
                lines.append(self.options[service])
            lines.append("")
        if "[relay]" not in extra:
            # Tests never reach beyond loopback: without a test DNS server,
            # lookups go to a closed loopback port and fail temporarily, so
            # remote mail simply stays queued.
            extra += '\n[relay]\ndns_servers = ["127.0.0.1:9"]\nretry_initial = "1h"\n'
        return "\n".join(lines) + "\n" + extra

    def command(self) -> list[str]:
        # "python -m twisted" is twist, not twistd; run twistd's entry point
        # with this very interpreter.
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--pidfile=", "-n",
                "mailappliance", "--config", self.config_path]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = SOURCE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("MAILAPPLIANCE_REQUIRE_CLIENTS", None)
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True) -> ServerProcess:
        """
        Start the server and wait until every configured port accepts
        connections.

        A free port is only free until twistd binds it: when the first
        start fails because a port was taken meanwhile (by another test
        run on the machine), the ports are chosen again and the start
        tried again, up to L{START_ATTEMPTS} times.
        """
        if self._started or not self._own_ports or not wait:
            return self._start(wait)
        for attempt in range(START_ATTEMPTS):
            try:
                return self._start(wait)
            except AssertionError:
                if attempt == START_ATTEMPTS - 1 or "Address already in use" not in self.log():
                    raise
            self._choose_new_ports(attempt)
        raise AssertionError("unreachable")

    def _choose_new_ports(self, attempt: int) -> None:
        # The failed attempt's log is kept beside the new one.
        self._log.close()
        os.rename(self.log_path, f"{self.log_path}.{attempt}")
        with open(self.config_path) as f:
            text = f.read()
        for name, old in list(self.ports.items()):
            new = self.ports[name] = free_port()
            text = text.replace(f"tcp:{old}:", f"tcp:{new}:")
        with open(self.config_path, "w") as f:
            f.write(text)

    def _start(self, wait: bool) -> ServerProcess:
        self._started = True
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(), cwd=self.base, env=self.env(), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.testcase.addCleanup(self.stop)
        if wait:
            for name, port in self.ports.items():
                wait_until(lambda: self._accepting(port), START_TIMEOUT, what=f"{name} on port {port}")
                if self._own_ports:
                    # Accepting is not enough: someone else may hold the port.
                    wait_until(lambda: self._bound(port), START_TIMEOUT, what=f"{name} bound to port {port}")
        return self

    def _bound(self, port: int) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"twistd exited with {self.process.returncode}:\n{self.log()}")
        return f"listen=tcp:{port}:" in self.log()

    def _accepting(self, port: int) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"twistd exited with {self.process.returncode}:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                self._probes[port] = self._probes.get(port, 0) + 1
                return True
        except OSError:
            return False

    def wait_sessions_closed(self, service: str = "smtp", timeout: float = 10.0) -> None:
        """
        Wait until every session of C{service} the log shows opened (the
        start-up probes of L{start} included) is logged closed, so that a
        test of the connection limits starts with none counted.
        """
        # A probe's connection may still wait in the listen backlog, not yet
        # accepted, let alone logged: wait until the log shows them all.
        probes = sum(self._probes.get(self.ports.get(key), 0) for key in (service, f"{service}_tls"))

        def settled() -> bool:
            log = self.log()
            opened = log.count(f"service={service} event=connect ")
            return opened >= probes and opened == log.count(f"service={service} event=disconnect ")

        wait_until(settled, timeout, what=f"every {service} session to be closed")

    def run_to_exit(self, timeout: float = 30.0) -> tuple[int, str]:
        """
        Start the server and wait for it to exit (for configuration errors).

        @return: the exit status and everything it printed.
        """
        result = subprocess.run(self.command(), cwd=self.base, env=self.env(), stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=timeout)
        return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")

    def cli(self, *arguments: str, stdin: bytes = b"", timeout: float = 60.0) -> subprocess.CompletedProcess:
        """
        Run C{mailappliance --config <this server's file> ARGUMENTS...}.
        """
        return subprocess.run(
            [sys.executable, "-m", "mailappliance.cli.main", "--config", self.config_path, *arguments],
            input=stdin, capture_output=True, cwd=self.base, env=self.env(), timeout=timeout,
        )

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        return wait_until(lambda: text in self.log() and self.log(), timeout, what=f"log line {text!r}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        """
        SIGKILL: the crash case.
        """
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int | None:
        """
        SIGTERM and wait for the exit (SIGKILL after a bound).
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if not self._log.closed:
            self._log.close()
        return self.process.returncode

    def maildir(self, address: str) -> str:
        local, domain = address.lower().rsplit("@", 1)
        return os.path.join(self.data_dir, "mail", domain, local)

    def maildir_files(self, address: str) -> list[str]:
        """
        The message files in the Maildir's C{new/} and C{cur/}, oldest first.
        """
        found = []
        for sub in ("new", "cur"):
            folder = os.path.join(self.maildir(address), sub)
            if os.path.isdir(folder):
                found += [os.path.join(folder, name) for name in os.listdir(folder)]
        return sorted(found, key=lambda p: os.path.basename(p))

    def wait_for_messages(self, address: str, count: int, timeout: float = 15.0) -> list[bytes]:
        """
        Wait until the Maildir holds C{count} messages; return their bytes.
        """
        files = wait_until(lambda: len(self.maildir_files(address)) >= count and self.maildir_files(address),
                           timeout, what=f"{count} message(s) for {address}")
        result = []
        for path in files:
            with open(path, "rb") as f:
                result.append(f.read())
        return result
