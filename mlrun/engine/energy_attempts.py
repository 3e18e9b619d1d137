"""The energy of a run's earlier attempts, for a resumed run to add to its own.

A finished or interrupted attempt writes its total into summary.json; a process killed by SIGKILL
writes nothing, so the running total (joules and measured seconds, all attempts so far) also goes
into every checkpoint, through a callback's state. A resume takes the larger of the two records:
both only grow from one attempt to the next, and the larger is the newer.
"""

from __future__ import annotations

from typing import Any

from mlrun.callbacks import Callback


class EnergyTotal(Callback):
    """Keeps `{"joules", "seconds"}` of every attempt so far in each checkpoint (main process)."""

    name = "energy_total"

    def __init__(self) -> None:
        self.meter = None  # this attempt's meter, once started (None: energy off, or not the measuring process)
        self.previous = (0.0, 0.0)  # (joules, seconds) of earlier attempts
        self.saved: dict[str, Any] = {}  # what the checkpoint this attempt resumed from recorded

    def state_dict(self) -> dict[str, Any]:
        if self.meter is None:
            return dict(self.saved)
        joules, seconds = self.meter.so_far()
        return {"joules": self.previous[0] + joules, "seconds": self.previous[1] + seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = dict(state or {})


def earlier_attempts(summary_energy: dict | None, saved: dict) -> tuple[float, float]:
    """(joules, seconds) of the attempts before this one: summary.json's total or the checkpoint's, the larger."""
    from_summary = (0.0, 0.0)
    if summary_energy:
        seconds = summary_energy.get("attempts_s", summary_energy.get("measured_s")) or 0.0
        from_summary = (summary_energy.get("joules") or 0.0, seconds)
    from_checkpoint = (saved.get("joules") or 0.0, saved.get("seconds") or 0.0)
    return max(from_summary, from_checkpoint)
