"""The loop's own state: where training is, what it has seen, and the flags callbacks may set."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    total_steps: int = 0  # the plan's optimizer steps (set at each start: a resume may change the plan)
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch (the resume position)
    samples_seen: int = 0
    best_value: float | None = None
    best_step: int | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: int | None = None
    last_train: dict[str, float] = field(default_factory=dict)  # the latest logged training figures
    nonfinite_skipped: int = 0
    overflow_skipped: int = 0
    train_time_s: float = 0.0  # wall time spent training, summed over resumes
    wall_time_s: float = 0.0  # wall time of the loop, evaluations and checkpoint writes too, summed over resumes
    data_wait_s: float = 0.0  # of which waiting for the next batch
    # The unlogged part of the current log window, so the logs of a resumed run are exact too.
    window_losses: list[float] = field(default_factory=list)
    window_steps: list[int] = field(default_factory=list)
    # Set by callbacks; read by the loop at the next step boundary.
    should_stop: bool = False
    stop_reason: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        if "wall_time_s" not in state:  # a checkpoint from before it was kept: its training time is a lower bound
            self.wall_time_s = self.train_time_s
