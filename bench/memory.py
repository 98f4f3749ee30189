"""
Peak resident memory of our server process during one workload.

Linux keeps the high-water mark of a process's resident set (C{VmHWM} in
C{/proc/PID/status}); writing C{5} to C{/proc/PID/clear_refs} resets it
(Linux 4.0+, as root or the owner), so the mark read after a workload is
that workload's peak, start-up excluded. Where the reset is refused, a
sampler thread reading C{VmRSS} stands in.
"""

from __future__ import annotations

import threading

SAMPLE_INTERVAL = 0.01


def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """
    Measure the peak RSS of one process between L{start} and L{stop}.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._reset = False
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            self._reset = True
        except OSError:
            self._reset = False
        self._sampled = _status_kib(self.pid, "VmRSS") or 0
        if not self._reset:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            value = _status_kib(self.pid, "VmRSS")
            if value is None:
                return
            self._sampled = max(self._sampled, value)

    def stop(self) -> float:
        """
        @return: the peak in MB (10**6 bytes).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = self._sampled
        if self._reset:
            peak = max(peak, _status_kib(self.pid, "VmHWM") or 0)
        return peak * 1024 / 1e6
