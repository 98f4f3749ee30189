"""
Child processes of the benchmark: starting, waiting for a listener,
stopping, and a record of every process started so that C{bench/run}'s
trap can stop them even if this Python process dies.

The record is one file per process in C{WORKDIR/pids/} holding the pid
(C{<name>.pid}), plus C{WORKDIR/pids/<name>.postfix} holding a Postfix
configuration folder for C{postfix -c DIR stop}. Nothing is ever stopped by
name: only the pids and instances recorded here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

# Bounds for waiting on a child (never a fixed sleep: poll and give up).
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
POLL_INTERVAL = 0.02


class BenchError(Exception):
    """
    The benchmark cannot go on; the message says why.
    """


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepting(port: int) -> bool:
    """
    @return: whether something accepts TCP connections on 127.0.0.1:port.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, what: str, interval: float = POLL_INTERVAL):
    """
    Poll C{predicate} until it returns something true.

    @return: that value.
    @raise BenchError: after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Registry:
    """
    The record of started processes and Postfix instances under
    C{WORKDIR/pids/}, read by C{bench/run}'s trap.
    """

    def __init__(self, workdir: str) -> None:
        self.directory = os.path.join(workdir, "pids")
        os.makedirs(self.directory, exist_ok=True)

    def add_pid(self, name: str, pid: int) -> None:
        with open(os.path.join(self.directory, f"{name}-{pid}.pid"), "w") as f:
            f.write(f"{pid}\n")

    def remove_pid(self, name: str, pid: int) -> None:
        _remove(os.path.join(self.directory, f"{name}-{pid}.pid"))

    def add_postfix(self, name: str, config_dir: str) -> None:
        with open(os.path.join(self.directory, f"{name}.postfix"), "w") as f:
            f.write(config_dir + "\n")

    def remove_postfix(self, name: str) -> None:
        _remove(os.path.join(self.directory, f"{name}.postfix"))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Child:
    """
    One child process with its output in a log file.

    @ivar process: the L{subprocess.Popen}, once started.
    """

    def __init__(self, registry: Registry, name: str, command: list[str], log_path: str,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.registry = registry
        self.name = name
        self.command = command
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Child:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd)
        self.registry.add_pid(self.name, self.process.pid)
        return self

    def check_running(self) -> None:
        """
        @raise BenchError: if the process has exited (with its log's end).
        """
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}")

    def wait_for_port(self, port: int, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            self.check_running()
            return accepting(port)

        wait_until(ready, timeout, f"{self.name} to listen on 127.0.0.1:{port}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """
        SIGTERM, wait, SIGKILL after L{STOP_TIMEOUT}. Idempotent.
        """
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        self.registry.remove_pid(self.name, process.pid)
        if self._log is not None and not self._log.closed:
            self._log.close()


def run(command: list[str], what: str, env: dict[str, str] | None = None, timeout: float = 600.0,
        tty: bool = False) -> str:
    """
    Run a command to completion.

    @param tty: run it under C{script(1)}, for programs (Postfix's) that
        print their errors only to a terminal.
    @return: its output.
    @raise BenchError: if it fails, with its output.
    """
    if tty:
        command = ["script", "-qec", " ".join(_shell_quote(a) for a in command), "/dev/null"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, timeout=timeout)
    output = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        raise BenchError(f"{what} failed with status {result.returncode}:\n{output}")
    return output


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
