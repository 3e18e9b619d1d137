"""`tracking` (where logged figures go besides metrics.jsonl) and `energy` (kWh and g CO2 measured during
training and profiling).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, PositiveFloat

from mlrun.config.schema.base import ComponentSpec, Section


class TrackerSpec(ComponentSpec):
    registry_kind = "trackers"


class EnergyConfig(Section):
    """Energy and carbon of a run: GPU energy from NVML, CPU energy from RAPL, else an estimate."""

    enabled: bool = True
    """Measure energy during training and profiling; written to summary.json and profile.json."""
    grid_g_per_kwh: Annotated[float, Field(ge=0.0)] = 475.0
    """Carbon intensity of the electricity in grams of CO2 per kWh (default: the world average, IEA 2019);
    look up your grid's figure (e.g. electricitymaps.com): ~30 in France, ~370 in the US, ~550 in India."""
    cpu_watts: PositiveFloat | None = None
    """Rated power of the CPU(s) in watts, for the estimate used when RAPL counters are unreadable;
    default 10 W per logical core. The estimate is rated power x the run's measured CPU utilisation."""
    rapl_root: str = "/sys/class/powercap"
    """Folder of the Linux powercap RAPL counters (intel-rapl:N/energy_uj)."""
    poll_s: PositiveFloat = 10.0
    """Seconds between counter reads, so a RAPL counter that wraps around is never missed."""
