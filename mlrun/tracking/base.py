"""The tracker interface: where logged figures go (console, metrics.jsonl, TensorBoard, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """What a tracker learns when the run starts."""

    run_dir: Path
    config: dict[str, Any]
    total_steps: int
    steps_per_epoch: int
    start_step: int  # > 0 when resuming
    is_main: bool  # only the main process writes files and prints


class Tracker:
    def start(self, info: RunInfo) -> None:
        pass

    def progress(self, step: int, epoch: int) -> None:
        """Every optimizer step: cheap host-side counters only, never a device sync."""

    def log(self, figures: dict[str, float], step: int, epoch: float) -> None:
        """Training figures every log_every steps, evaluation figures after each evaluation."""

    def finish(self, summary: dict[str, Any]) -> None:
        pass
