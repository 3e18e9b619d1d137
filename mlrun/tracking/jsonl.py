"""metrics.jsonl: one JSON object a line, always written: {"step", "epoch", "time", "train/loss", ...}."""

from __future__ import annotations

import json
import time

from mlrun.registry import trackers
from mlrun.tracking.base import RunInfo, Tracker

METRICS_FILE = "metrics.jsonl"


class JsonLines(Tracker):
    file = None  # until start(): finish() after another tracker's failed start must not hide that failure

    def start(self, info: RunInfo) -> None:
        self.file = None
        if not info.is_main:
            return
        path = info.run_dir / METRICS_FILE
        if path.exists():
            # A resumed run drops the lines logged after its checkpoint: they are logged again.
            kept = [
                line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= info.start_step
            ]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a", encoding="utf-8")

    def log(self, figures: dict[str, float], step: int, epoch: float) -> None:
        if self.file is not None:
            record = {"step": step, "epoch": round(epoch, 4), "time": round(time.time(), 3), **figures}
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def finish(self, summary) -> None:
        if self.file is not None:
            self.file.close()


@trackers.register("jsonl")
def jsonl() -> Tracker:
    """metrics.jsonl in the run directory (always on; listing it is allowed and changes nothing)."""
    return JsonLines()
