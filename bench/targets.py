"""
The servers under test that are Python programs: mailappliance itself
(the real C{twistd -n mailappliance}) and the unsafe Twisted reference
(L{bench.reference}). Postfix and Dovecot are in L{bench.postfix} and
L{bench.dovecot}.

Every target has the same shape: L{start} a fresh instance in a fresh
folder of its own (nothing of an earlier run is reused, nothing is
deleted mid-run), the ports it listens on, the Maildir of the benchmark
user C{bench@example.test}, and L{stop}.
"""

from __future__ import annotations

import os
import sys

from bench.maildirs import fill_maildir
from bench.processes import Child, Registry, free_port

BENCH_USER = "bench@example.test"
BENCH_PASSWORD = "benchpass"
REMOTE_RECIPIENT = "bench@remote.test"
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Postfix's default smtpd_client_connection_count_limit. Ours defaults to
# 20, exactly the number of sessions of W1: smtp-source opens the next
# connection as soon as it has read the 221, which can be before our
# server has seen the previous one close, and a 421 would end the run.
MAX_CONNECTIONS_PER_IP = 50


def python_environment() -> dict[str, str]:
    """
    The environment for our Python children: the checkout first on the
    path (as C{tests/e2e/harness.py} does), so the bench measures this tree
    whether or not the package is installed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = SOURCE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Mailappliance:
    """
    Our server: C{twistd -n mailappliance --config FILE} with SMTP and
    POP3 on free loopback ports, one local domain, one user (C{{PLAIN}}
    password, as Dovecot's), the relay pointing at the sink of W5.
    """

    name = "mailappliance"

    def __init__(self, registry: Registry, python: str = sys.executable, sink_port: int | None = None,
                 wrapper: list[str] | None = None) -> None:
        self.registry = registry
        self.python = python
        self.sink_port = sink_port
        self.wrapper = wrapper or []
        self.child: Child | None = None
        self.base = ""
        self.smtp_port = 0
        self.pop3_port = 0

    @property
    def memory_pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    @property
    def maildir(self) -> str:
        return os.path.join(self.base, "var", "mail", "example.test", "bench")

    def config_text(self) -> str:
        if self.sink_port is not None:
            relay = f'smarthost = "127.0.0.1:{self.sink_port}"\nsmarthost_tls = "none"\n'
        else:
            # Nothing is relayed outside W5; no lookup may leave loopback.
            relay = 'dns_servers = ["127.0.0.1:9"]\n'
        return (
            "[server]\n"
            'hostname = "mail.example.test"\n'
            'data_dir = "var"\n'
            'local_domains = ["example.test"]\n'
            "\n[smtp]\n"
            f'listen = ["tcp:{self.smtp_port}:interface=127.0.0.1"]\n'
            f"max_connections_per_ip = {MAX_CONNECTIONS_PER_IP}\n"
            "\n[pop3]\n"
            f'listen = ["tcp:{self.pop3_port}:interface=127.0.0.1"]\n'
            "\n[accounts]\n"
            'users_file = "users"\n'
            'aliases_file = ""\n'
            'resolvers = ["users"]\n'
            "\n[relay]\n" + relay
        )

    def start(self, run_dir: str) -> None:
        self.base = os.path.join(run_dir, self.name)
        os.makedirs(self.base)
        self.smtp_port, self.pop3_port = free_port(), free_port()
        config = os.path.join(self.base, "mailappliance.toml")
        with open(config, "w") as f:
            f.write(self.config_text())
        with open(os.path.join(self.base, "users"), "w") as f:
            f.write(f"{BENCH_USER}:{{PLAIN}}{BENCH_PASSWORD}\n")
        command = [*self.wrapper, self.python, "-c", "from twisted.scripts.twistd import run; run()",
                   "--pidfile=", "-n", "mailappliance", "--config", config]
        self.child = Child(self.registry, self.name, command, os.path.join(self.base, "twistd.log"),
                           env=python_environment(), cwd=self.base).start()
        self.child.wait_for_port(self.smtp_port)
        self.child.wait_for_port(self.pop3_port)

    def fill_mailbox(self, count: int, size: int) -> None:
        # Our delivery stores messages as received, with CRLF line ends.
        fill_maildir(self.maildir, count, size, b"\r\n")

    def check_running(self) -> None:
        if self.child is not None:
            self.child.check_running()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None


class TwistedReference:
    """
    L{bench.reference}: Twisted's own ESMTP server, Maildir without fsync.
    SMTP workloads only.
    """

    name = "twisted-nofsync"
    memory_pid = None
    pop3_port = None

    def __init__(self, registry: Registry, python: str = sys.executable) -> None:
        self.registry = registry
        self.python = python
        self.child: Child | None = None
        self.base = ""
        self.smtp_port = 0

    @property
    def maildir(self) -> str:
        return os.path.join(self.base, "Maildir")

    def start(self, run_dir: str) -> None:
        self.base = os.path.join(run_dir, self.name)
        os.makedirs(self.base)
        self.smtp_port = free_port()
        command = [self.python, "-m", "bench.reference", "--port", str(self.smtp_port), "--maildir", self.maildir]
        self.child = Child(self.registry, self.name, command, os.path.join(self.base, "reference.log"),
                           env=python_environment(), cwd=SOURCE_ROOT).start()
        self.child.wait_for_port(self.smtp_port)

    def check_running(self) -> None:
        if self.child is not None:
            self.child.check_running()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None
