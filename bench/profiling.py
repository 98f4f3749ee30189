"""
Profiles of our server during a workload, with py-spy (sampling, from
outside the process, so the server runs unmodified).

C{py-spy record --pid PID --format raw --threads --nonblocking} writes
collapsed stacks (one line per distinct stack: C{frame;frame;... COUNT},
the first frame naming the thread); L{summarize} turns them into the top
functions by own time (the innermost frame) and by total time (anywhere on
the stack), for the reactor thread and the disk pool threads apart.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess

SAMPLE_RATE = 200
TOP = 25


class Profiler:
    """
    Attach py-spy to our server for each measured run.

    @ivar summaries: C{(workload key, run folder, summary text)} of every
        run profiled.
    """

    def __init__(self, py_spy: str, out_dir: str, rate: int = SAMPLE_RATE, gil: bool = True) -> None:
        """
        @param gil: sample only the thread holding the GIL (where Python
            spends CPU, the reactor's limit), rather than every thread not
            idle (which counts time blocked in system calls: fsync).
        """
        self.py_spy = py_spy
        self.gil = gil
        self.out_dir = out_dir
        self.rate = rate
        self.summaries: list[tuple[str, str, str]] = []
        self._process: subprocess.Popen | None = None
        self._current: tuple[str, str, str] | None = None
        os.makedirs(out_dir, exist_ok=True)

    def start(self, pid: int, key: str, run_dir: str) -> None:
        name = os.path.basename(run_dir)
        raw = os.path.join(self.out_dir, name + ".txt")
        log = open(os.path.join(self.out_dir, name + ".log"), "wb")
        self._process = subprocess.Popen(
            [self.py_spy, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw", "--threads",
             "--nonblocking", "--output", raw, *(["--gil"] if self.gil else [])],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        self._current = (key, name, raw)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or self._current is None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        key, name, raw = self._current
        self._current = None
        if os.path.exists(raw):
            text = summarize(raw, self.rate)
            with open(os.path.join(self.out_dir, name + ".summary.txt"), "w") as f:
                f.write(text)
            self.summaries.append((key, name, text))


def summarize(raw_path: str, rate: int = SAMPLE_RATE, top: int = TOP) -> str:
    """
    @return: the top functions by own and total samples, per thread group
        (the reactor thread; every other thread together).
    """
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    samples: collections.Counter = collections.Counter()
    with open(raw_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            group = "reactor thread" if _is_reactor_stack(frames) else "other threads (disk pool)"
            samples[group] += count
            functions = [_function(frame) for frame in frames[1:]] or ["?"]
            own[group][functions[-1]] += count
            for function in set(functions):
                total[group][function] += count
    lines = []
    for group in sorted(samples, key=lambda g: -samples[g]):
        n = samples[group]
        lines.append(f"== {group}: {n} samples at {rate}/s (about {n / rate:.2f}s)")
        lines.append("   own%  total%  function")
        for function, count in own[group].most_common(top):
            lines.append(f"  {100 * count / n:5.1f}  {100 * total[group][function] / n:6.1f}  {function}")
        lines.append("   -- by total% --")
        for function, count in total[group].most_common(top):
            lines.append(f"  {100 * own[group][function] / n:5.1f}  {100 * count / n:6.1f}  {function}")
    return "\n".join(lines) + "\n"


def _is_reactor_stack(frames: list[str]) -> bool:
    # The reactor runs in the main thread, under twistd's run(); pool
    # threads start in threading's _bootstrap.
    return not any("_bootstrap" in frame for frame in frames[:3])


def _function(frame: str) -> str:
    # "name (path/to/file.py:123)" -> "name (file.py)": lines merged.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"
