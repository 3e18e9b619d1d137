"""Warm-up, stable, decay (WSD): the lr holds at its peak until the last `decay_fraction` of the run.

Because the decay is placed from the end of the run, a run resumed from a checkpoint taken in the
stable phase with a larger train.epochs / train.max_steps simply stays stable longer and decays once,
at its new end: the result equals a run configured that long from the start.

    mlrun train c.yaml scheduler={name: wsd, warmup_steps: 100, decay_fraction: 0.2}
    mlrun train c.yaml train.max_steps=20000 --resume runs/c/checkpoints/step-00008000   # extend

A checkpoint taken inside the decay cannot be extended without raising the lr back up; resuming
one with another length is refused (exit 2), naming the last step before the decay.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt

from mlrun.errors import UsageError
from mlrun.optim.schedulers import Ratio
from mlrun.registry import schedulers

SHAPES = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    # 1 - sqrt: drops fast, then flattens (Hägele et al. 2024 found it best among simple shapes).
    "sqrt": lambda p: 1.0 - math.sqrt(p),
}


class WarmupStableDecay:
    """step -> multiplier after warm-up; remembers where its decay began, for resumes of another length."""

    def __init__(self, decay_start: int, total_steps: int, shape: str, min_lr_ratio: float):
        self.decay_start, self.total_steps = decay_start, total_steps
        self.shape, self.min_lr_ratio = SHAPES[shape], min_lr_ratio
        self.last_step = 0

    def __call__(self, step: int) -> float:
        self.last_step = step
        if step < self.decay_start:
            return 1.0
        p = min(1.0, (step - self.decay_start) / max(1, self.total_steps - self.decay_start))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * self.shape(p)

    def state_dict(self) -> dict[str, Any]:
        return {"decay_start": self.decay_start, "step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        old_start, step = state["decay_start"], state["step"]
        if step > old_start and old_start != self.decay_start:
            raise UsageError(
                f"scheduler wsd: this checkpoint (step {step}) is inside the decay that began at step "
                f"{old_start}; with the new length the decay would begin at step {self.decay_start} and the lr "
                f"would jump back up. To extend the run, resume from a checkpoint at or before step {old_start} "
                "(keep one: train.keep_checkpoints), or keep the run's length"
            )


@schedulers.register("wsd")
def wsd(
    total_steps: int,
    warmup_steps: int,
    /,
    *,
    decay_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2,
    decay_steps: PositiveInt | None = None,
    shape: Literal["linear", "cosine", "sqrt"] = "sqrt",
    min_lr_ratio: Ratio = 0.0,
) -> WarmupStableDecay:
    """Warm-up, then the peak lr held, then a decay over the last decay_fraction of the steps (extendable).

    Args:
        decay_fraction: share of all optimizer steps spent decaying, at the end of the run.
        decay_steps: the decay's length in optimizer steps instead of a share (the same whatever the run's length).
        shape: linear | cosine | sqrt (1 - sqrt(progress)) from lr to min_lr_ratio * lr.
        min_lr_ratio: the lr at the last step, as a fraction of lr.
    """
    decay = decay_steps or max(1, round(decay_fraction * total_steps))
    decay_start = max(warmup_steps, total_steps - decay)
    return WarmupStableDecay(decay_start, total_steps, shape, min_lr_ratio)
