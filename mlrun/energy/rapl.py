"""CPU package energy from Linux RAPL counters: <root>/intel-rapl:N/energy_uj (microjoules).

Each package's counter grows to max_energy_range_uj and wraps to zero (every ~45 minutes at 100 W
on many CPUs), so the meter polls it more often than that and adds the distance across each wrap.
The counters are often readable by root only (since Linux 5.10): then `open_rapl` returns None
and the meter falls back to the estimate. AMD Zen CPUs expose the same interface.
"""

from __future__ import annotations

import re
from pathlib import Path

# Top-level zones are packages (intel-rapl:0, intel-rapl:1); intel-rapl:0:0 (cores, dram) are
# parts of a package's figure already and would be counted twice.
PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")


class RaplCounter:
    """Sum of the package counters under `root`, with wrap-around."""

    source = "rapl"
    estimate = False
    device = "cpu"

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges_uj = [int((zone / "max_energy_range_uj").read_text()) for zone in zones]
        self.last_uj: list[int] = []
        self.total_uj = 0

    def start(self) -> None:
        self.last_uj, self.total_uj = self._read(), 0

    def poll(self) -> None:
        for i, now in enumerate(self._read()):
            before = self.last_uj[i]
            # A smaller reading means the counter passed max_energy_range_uj and started again from 0.
            self.total_uj += now - before if now >= before else self.ranges_uj[i] - before + now
            self.last_uj[i] = now

    def joules(self) -> float:
        return self.total_uj / 1e6

    def describe(self) -> dict:
        return {"zones": [zone.name for zone in self.zones]}

    def _read(self) -> list[int]:
        return [int((zone / "energy_uj").read_text()) for zone in self.zones]


def open_rapl(root: str | Path) -> tuple[RaplCounter | None, str | None]:
    """(the counter, None) when package counters under `root` are readable, else (None, why not)."""
    root = Path(root)
    zones = sorted(p for p in root.glob("intel-rapl:*") if PACKAGE_ZONE.match(p.name)) if root.is_dir() else []
    if not zones:
        return None, f"no RAPL package counters under {root}"
    try:
        counter = RaplCounter(zones)
        counter._read()
    except (OSError, ValueError) as exc:  # PermissionError: root-only since Linux 5.10
        return None, (
            f"RAPL counters under {root} are not readable ({type(exc).__name__}); "
            f"`sudo chmod a+r {root}/intel-rapl:*/energy_uj` lets the run measure instead of estimate"
        )
    return counter, None
