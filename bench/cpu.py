"""
Where the CPU went during one run: the machine's (C{/proc/stat}: busy,
of it in the kernel, and I/O wait) and, for our server, its own user and
system seconds (C{/proc/PID/stat}, all threads). On a 2-core machine that
tells whether a figure is limited by CPU (whose, user or kernel) or by
waiting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")


def _machine() -> list[int]:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return [int(x) for x in fields]


def _process(pid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may hold spaces: fields start after its ")".
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


@dataclass
class CpuFigures:
    """
    @ivar busy: fraction of all CPUs' time not idle (0-1).
    @ivar kernel: fraction of all CPUs' time in the kernel (system, irq,
        softirq).
    @ivar iowait: fraction of all CPUs' time idle waiting for I/O.
    @ivar user_seconds: our server's user CPU seconds, or L{None}.
    @ivar system_seconds: our server's system CPU seconds, or L{None}.
    """

    busy: float
    kernel: float
    iowait: float
    user_seconds: float | None = None
    system_seconds: float | None = None

    def describe(self) -> str:
        text = f"machine CPU {100 * self.busy:.0f}% busy ({100 * self.kernel:.0f}% kernel, {100 * self.iowait:.0f}% iowait)"
        if self.user_seconds is not None:
            text += f", server {self.user_seconds:.2f}s user + {self.system_seconds:.2f}s system"
        return text


class CpuUsage:
    """
    Measure between L{start} and L{stop}.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self._machine: list[int] = []
        self._process: tuple[int, int] | None = None

    def start(self) -> None:
        self._machine = _machine()
        self._process = _process(self.pid) if self.pid is not None else None

    def stop(self) -> CpuFigures:
        now = _machine()
        delta = [b - a for a, b in zip(self._machine, now)]
        # user nice system idle iowait irq softirq steal ...
        total = sum(delta[:8]) or 1
        idle = delta[3] + delta[4]
        figures = CpuFigures(
            busy=(total - idle) / total,
            kernel=(delta[2] + delta[5] + delta[6]) / total,
            iowait=delta[4] / total,
        )
        if self.pid is not None and self._process is not None:
            after = _process(self.pid)
            if after is not None:
                figures.user_seconds = (after[0] - self._process[0]) / TICKS
                figures.system_seconds = (after[1] - self._process[1]) / TICKS
        return figures
