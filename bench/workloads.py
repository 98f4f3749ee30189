"""
The workloads of the issue, each measured on one freshly started target.

  - W1: C{smtp-source -s 20 -l 4096 -m 2000} (one message per connection),
    messages/s until all are in the Maildir;
  - W2: the same with C{-s 1 -m 500};
  - W3: C{-s 4 -l 1048576 -m 100}, MiB/s until all are in the Maildir;
  - W4: a Maildir of 2,000 x 4 KB messages downloaded with C{poplib}
    (USER/PASS, UIDL, RETR all, DELE all, QUIT), seconds;
  - W5: 2,000 x 4 KB messages for a remote domain (20 sessions), relayed
    to the sink, messages/s until all are at the sink;
  - R20: ours alone, 20 MB messages in (C{-s 4 -m 8}) and out (RETR):
    the peak RSS must not grow with the message size.

The clock starts when smtp-source is started (or the POP3 connection
opened) and stops when the last message is where it belongs (polled every
L{POLL_INTERVAL}); the Maildir or sink is checked for the exact count.
"""

from __future__ import annotations

import os
import poplib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from bench.cpu import CpuFigures, CpuUsage
from bench.maildirs import count_messages
from bench.memory import PeakMemory
from bench.processes import BenchError, Registry
from bench.targets import BENCH_PASSWORD, BENCH_USER, REMOTE_RECIPIENT, SOURCE_ROOT, python_environment

POLL_INTERVAL = 0.01
# Files created (and left: nothing is deleted mid-run) to measure what a
# file creation costs in the run's folder before the run.
PROBE_FILES = 200
RUN_TIMEOUT = 600.0
SENDER = "sender@client.example.test"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Workload:
    """
    @ivar unit: of the figure: C{msg/s}, C{MiB/s} or C{s}.
    @ivar higher_is_better: L{False} for times.
    @ivar targets: names of the targets it runs on, ours first.
    """

    key: str
    title: str
    unit: str
    higher_is_better: bool
    targets: tuple[str, ...]
    sessions: int = 0
    size: int = 0
    count: int = 0
    kind: str = "smtp"


WORKLOADS = (
    Workload("W1", "20 sessions x 4 KB, 2000 msgs", "msg/s", True, ("mailappliance", "postfix", "twisted-nofsync"),
             20, 4096, 2000),
    Workload("W2", "1 session x 4 KB, 500 msgs", "msg/s", True, ("mailappliance", "postfix", "twisted-nofsync"),
             1, 4096, 500),
    Workload("W3", "4 sessions x 1 MiB, 100 msgs", "MiB/s", True, ("mailappliance", "postfix", "twisted-nofsync"),
             4, MIB, 100),
    Workload("W4", "POP3 2000 x 4 KB: UIDL, RETR, DELE all", "s", False, ("mailappliance", "dovecot"),
             1, 4096, 2000, kind="pop3"),
    Workload("W5", "relay 2000 x 4 KB, 20 sessions, to sink", "msg/s", True, ("mailappliance", "postfix"),
             20, 4096, 2000, kind="relay"),
    Workload("R20", "20 MB messages: 4 x 2 in by SMTP, RETR out", "MB", False, ("mailappliance",),
             4, 20_000_000, 8, kind="large"),
)


@dataclass
class Measurement:
    """
    @ivar value: the figure, in the workload's unit.
    @ivar seconds: the time measured.
    @ivar peak_rss_mb: our process's peak RSS during the run, or L{None}.
    """

    value: float
    seconds: float
    peak_rss_mb: float | None = None
    cpu: CpuFigures | None = None
    create_us: float | None = None
    notes: list[str] = field(default_factory=list)


class Sink:
    """
    The W5 sink (L{bench.sink}) as a child process; L{count} is the number
    of messages it has accepted so far.
    """

    def __init__(self, registry: Registry, python: str = sys.executable) -> None:
        self.registry = registry
        self.python = python
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.count = 0
        self._thread: threading.Thread | None = None

    def start(self) -> Sink:
        self.process = subprocess.Popen([self.python, "-m", "bench.sink"], stdout=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, cwd=SOURCE_ROOT, env=python_environment())
        self.registry.add_pid("sink", self.process.pid)
        line = self.process.stdout.readline().decode()
        if not line.startswith("READY "):
            raise BenchError(f"the sink did not start: {line!r}")
        self.port = int(line.split()[1])
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith(b"M "):
                self.count = int(line[2:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        if self.process is not None:
            self.registry.remove_pid("sink", self.process.pid)


def smtp_source(port: int, sessions: int, size: int, count: int, recipient: str, delivered, target,
                log_path: str) -> float:
    """
    Run smtp-source against C{port} and wait until C{delivered()} reaches
    C{count}.

    @return: the seconds from start to the last delivery.
    @raise BenchError: if smtp-source fails, the target dies, or the count
        is not reached in L{RUN_TIMEOUT}.
    """
    command = ["smtp-source", "-s", str(sessions), "-l", str(size), "-m", str(count), "-f", SENDER,
               "-t", recipient, "-M", "client.example.test", f"127.0.0.1:{port}"]
    with open(log_path, "ab") as log:
        start = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while True:
                done = delivered()
                now = time.monotonic()
                if done >= count:
                    break
                status = process.poll()
                if status is not None and status != 0:
                    raise BenchError(f"smtp-source failed with status {status} (see {log_path})")
                target.check_running()
                if now - start > RUN_TIMEOUT:
                    raise BenchError(f"{done} of {count} messages delivered after {RUN_TIMEOUT:g}s")
                time.sleep(POLL_INTERVAL)
            process.wait(RUN_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0:
        raise BenchError(f"smtp-source failed with status {process.returncode} (see {log_path})")
    if done != count:
        raise BenchError(f"{done} messages delivered, {count} sent")
    return now - start


def pop3_download(port: int, expected: int) -> tuple[float, int]:
    """
    USER/PASS, UIDL, RETR every message, DELE every message, QUIT.

    @return: the seconds taken and the bytes retrieved.
    @raise BenchError: if the mailbox does not hold C{expected} messages.
    """
    start = time.monotonic()
    client = poplib.POP3("127.0.0.1", port, timeout=RUN_TIMEOUT)
    client.user(BENCH_USER)
    client.pass_(BENCH_PASSWORD)
    _, listing, _ = client.uidl()
    if len(listing) != expected:
        client.quit()
        raise BenchError(f"UIDL listed {len(listing)} messages, expected {expected}")
    retrieved = 0
    for number in range(1, expected + 1):
        _, _, octets = client.retr(number)
        retrieved += octets
    for number in range(1, expected + 1):
        client.dele(number)
    client.quit()
    return time.monotonic() - start, retrieved


def probe_file_creation(folder: str, count: int = PROBE_FILES) -> float:
    """
    Create C{count} empty files in a new folder (kept).

    @return: the mean microseconds per creation. On ext4 without a journal
        (these machines) it ranges from about 20 to over 800, depending on
        how many inodes were freed recently in the folder's block group:
        the state of the file system is part of every figure.
    """
    os.makedirs(folder)
    start = time.perf_counter()
    for n in range(count):
        os.close(os.open(os.path.join(folder, str(n)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return (time.perf_counter() - start) / count * 1e6


def measure(workload: Workload, target, run_dir: str, sink: Sink | None, profiler=None) -> Measurement:
    """
    Start C{target} in C{run_dir}, run the workload, stop it.
    """
    os.makedirs(run_dir)
    create_us = probe_file_creation(os.path.join(run_dir, "probe"))
    target.start(run_dir)
    memory = None
    try:
        if workload.kind == "pop3":
            # Untimed: the mailbox as delivered, before the session.
            target.fill_mailbox(workload.count, workload.size)
        if target.memory_pid is not None:
            memory = PeakMemory(target.memory_pid)
            memory.start()
        if profiler is not None and target.memory_pid is not None:
            profiler.start(target.memory_pid, workload.key, run_dir)
        cpu = CpuUsage(target.memory_pid)
        cpu.start()
        try:
            result = _run(workload, target, run_dir, sink)
            result.cpu = cpu.stop()
            result.create_us = create_us
        finally:
            if profiler is not None and target.memory_pid is not None:
                profiler.stop()
        if memory is not None:
            result.peak_rss_mb = memory.stop()
            memory = None
        return result
    finally:
        if memory is not None:
            memory.stop()
        target.stop()


def _run(workload: Workload, target, run_dir: str, sink: Sink | None) -> Measurement:
    log = os.path.join(run_dir, "client.log")
    if workload.kind == "smtp":
        seconds = smtp_source(target.smtp_port, workload.sessions, workload.size, workload.count,
                              BENCH_USER, lambda: count_messages(target.maildir), target, log)
        if workload.unit == "MiB/s":
            return Measurement(workload.count * workload.size / MIB / seconds, seconds)
        return Measurement(workload.count / seconds, seconds)
    if workload.kind == "relay":
        if sink is None:
            raise BenchError("W5 needs the sink")
        before = sink.count
        seconds = smtp_source(target.smtp_port, workload.sessions, workload.size, workload.count,
                              REMOTE_RECIPIENT, lambda: sink.count - before, target, log)
        return Measurement(workload.count / seconds, seconds)
    if workload.kind == "pop3":
        seconds, retrieved = pop3_download(target.pop3_port, workload.count)
        left = count_messages(target.maildir)
        if left:
            raise BenchError(f"{target.name}: {left} messages left after DELE all and QUIT")
        return Measurement(seconds, seconds, notes=[f"{retrieved} octets retrieved"])
    if workload.kind == "large":
        seconds = smtp_source(target.smtp_port, workload.sessions, workload.size, workload.count,
                              BENCH_USER, lambda: count_messages(target.maildir), target, log)
        pop_seconds, retrieved = pop3_download(target.pop3_port, workload.count)
        return Measurement(0.0, seconds + pop_seconds,
                           notes=[f"SMTP in {seconds:.2f}s, POP3 out {pop_seconds:.2f}s, {retrieved} octets"])
    raise AssertionError(workload.kind)
