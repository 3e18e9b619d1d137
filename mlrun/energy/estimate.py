"""CPU energy estimated as rated power x measured CPU utilisation; always labelled an estimate.

    joules = cpu_watts x (CPU seconds used by the run's processes) / logical cores

CPU seconds are those of this process, its children (data-loader workers) and, under torchrun,
the sibling ranks on this host, read with psutil. The CPU's idle power and the rest of the machine
(memory, disks, fans) are not counted, so it is a lower-bound estimate of the run's share.
"""

from __future__ import annotations

import os
import time

# Desktop CPUs draw ~65-125 W over 6-16 cores, servers ~200-350 W over 32-128: ~10 W a core.
WATTS_PER_CORE = 10.0


def default_cpu_watts(cores: int | None = None) -> float:
    return WATTS_PER_CORE * (cores or os.cpu_count() or 1)


class CpuEstimate:
    """CPU seconds of the run's processes since `start()`, turned into joules at rated power."""

    source = "estimate"
    estimate = True
    device = "cpu"

    def __init__(self, cpu_watts: float | None, siblings: bool):
        self.cores = os.cpu_count() or 1
        self.cpu_watts = cpu_watts or default_cpu_watts(self.cores)
        self.siblings = siblings  # under torchrun: count every rank on this host
        self.first: dict[int, float] = {}  # pid -> CPU seconds at first sight
        self.last: dict[int, float] = {}  # pid -> CPU seconds at the newest poll (kept after it exits)
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.first, self.last, self.started = {}, {}, time.perf_counter()
        for pid, seconds in self._cpu_seconds().items():
            self.first[pid] = self.last[pid] = seconds

    def poll(self) -> None:
        for pid, seconds in self._cpu_seconds().items():
            self.first.setdefault(pid, 0.0)  # a process born during the run: all its time is the run's
            self.last[pid] = seconds
        self.stopped = time.perf_counter()

    def cpu_seconds(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)

    def joules(self) -> float:
        return self.cpu_watts * self.cpu_seconds() / self.cores

    def describe(self) -> dict:
        wall = max(self.stopped - self.started, 1e-9)
        return {
            "cpu_watts": self.cpu_watts,
            "cores": self.cores,
            "cpu_seconds": round(self.cpu_seconds(), 3),
            "utilisation": round(self.cpu_seconds() / (wall * self.cores), 4),
        }

    def _cpu_seconds(self) -> dict[int, float]:
        import psutil

        me = psutil.Process()
        root = me.parent() if self.siblings and me.parent() is not None else me
        seconds = {}
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # exited between listing and reading: its last polled time stays counted
            seconds[process.pid] = times.user + times.system
        return seconds
