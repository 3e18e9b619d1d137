"""Learning-rate schedules (registry `schedulers`), all with the same linear warm-up.

A schedule factory takes (total_steps, warmup_steps) and returns a curve: step -> lr multiplier
for steps after warm-up. `LRSchedule` applies warm-up, then the curve, to every parameter group:

    lr(step) = lr * (start + (1 - start) * step / warmup)          for step < warmup
    lr(step) = lr * curve(step)                                     after

`step` counts optimizer steps already taken, so lr(0) is the rate of the first update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, PositiveInt

from mlrun.registry import schedulers

Ratio = Annotated[float, Field(ge=0.0, le=1.0)]
Curve = Callable[[int], float]


class LRSchedule:
    """Sets each group's lr to base_lr * multiplier(step); `step()` once per optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, curve: Curve, warmup_steps: int, warmup_start_factor: float):
        self.optimizer, self.curve = optimizer, curve
        self.warmup_steps, self.start_factor = warmup_steps, warmup_start_factor
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def multiplier(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        return self.curve(step)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def observe(self, metrics: dict[str, float]) -> None:
        """Evaluation results, for schedules that react to them (plateau)."""
        if hasattr(self.curve, "observe"):
            self.curve.observe(metrics)
            self._apply()

    def last_lr(self) -> float:
        """The largest group's lr (groups with an lr_scale or layer decay run below it)."""
        # float(): torchao's low-bit optimizers keep lr as a tensor, which metrics.jsonl cannot hold.
        return max(float(group["lr"]) for group in self.optimizer.param_groups)

    def _apply(self) -> None:
        factor = self.multiplier(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def state_dict(self) -> dict[str, Any]:
        curve_state = self.curve.state_dict() if hasattr(self.curve, "state_dict") else None
        return {"step_count": self.step_count, "base_lrs": self.base_lrs, "curve": curve_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # base_lrs stay those of the current config: a resume with a changed optimizer.lr (or a PBT
        # perturbation) takes the new rate; with an unchanged config they are equal anyway.
        self.step_count = state["step_count"]
        if state["curve"] is not None:
            self.curve.load_state_dict(state["curve"])
        self._apply()


def _progress(step: int, total: int, warmup: int) -> float:
    """Fraction of the post-warm-up steps done, in [0, 1]."""
    return min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))


@schedulers.register("constant")
def constant(total_steps: int, warmup_steps: int, /) -> Curve:
    """The same learning rate after warm-up."""
    return lambda step: 1.0


@schedulers.register("linear")
def linear(total_steps: int, warmup_steps: int, /, *, min_lr_ratio: Ratio = 0.0) -> Curve:
    """Linear decay from lr to min_lr_ratio * lr at the last step.

    Args:
        min_lr_ratio: the floor, as a fraction of lr.
    """
    return lambda step: 1.0 - (1.0 - min_lr_ratio) * _progress(step, total_steps, warmup_steps)


@schedulers.register("cosine")
def cosine(total_steps: int, warmup_steps: int, /, *, min_lr_ratio: Ratio = 0.0) -> Curve:
    """Half-cosine decay from lr to min_lr_ratio * lr (Loshchilov & Hutter, SGDR without restarts).

    Args:
        min_lr_ratio: the floor, as a fraction of lr.
    """

    def curve(step: int) -> float:
        p = _progress(step, total_steps, warmup_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))

    return curve


@schedulers.register("cosine_restarts")
def cosine_restarts(
    total_steps: int,
    warmup_steps: int,
    /,
    *,
    cycle_steps: PositiveInt | None = None,
    cycle_mult: Annotated[float, Field(ge=1.0)] = 1.0,
    min_lr_ratio: Ratio = 0.0,
) -> Curve:
    """Cosine decay restarted every cycle (SGDR), cycles growing by cycle_mult.

    Args:
        cycle_steps: optimizer steps of the first cycle; default a quarter of the post-warm-up steps.
        cycle_mult: each cycle is this many times longer than the one before.
        min_lr_ratio: the floor, as a fraction of lr.
    """
    first = cycle_steps or max(1, (total_steps - warmup_steps) // 4)

    def curve(step: int) -> float:
        t, length = step - warmup_steps, first
        while t >= length:
            t, length = t - length, length * cycle_mult
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t / length))

    return curve


@schedulers.register("step")
def step(total_steps: int, warmup_steps: int, /, *, step_size: PositiveInt, gamma: Ratio = 0.1) -> Curve:
    """Multiply the lr by gamma every step_size optimizer steps after warm-up.

    Args:
        step_size: optimizer steps between decays.
        gamma: multiplier at each decay.
    """
    return lambda s: gamma ** ((s - warmup_steps) // step_size)


@schedulers.register("exponential")
def exponential(total_steps: int, warmup_steps: int, /, *, gamma: Ratio = 0.999, min_lr_ratio: Ratio = 0.0) -> Curve:
    """Multiply the lr by gamma every optimizer step after warm-up, down to a floor.

    Args:
        gamma: per-step multiplier.
        min_lr_ratio: the floor, as a fraction of lr.
    """
    return lambda s: max(min_lr_ratio, gamma ** (s - warmup_steps))


@schedulers.register("polynomial")
def polynomial(
    total_steps: int, warmup_steps: int, /, *, power: Annotated[float, Field(gt=0.0)] = 2.0, min_lr_ratio: Ratio = 0.0
) -> Curve:
    """Polynomial decay (1 - progress) ** power from lr to min_lr_ratio * lr.

    Args:
        power: exponent; 1 is linear decay.
        min_lr_ratio: the floor, as a fraction of lr.
    """
    return lambda s: min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - _progress(s, total_steps, warmup_steps)) ** power


@schedulers.register("onecycle")
def onecycle(
    total_steps: int,
    warmup_steps: int,
    /,
    *,
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3,
    div_factor: Annotated[float, Field(ge=1.0)] = 25.0,
    final_div_factor: Annotated[float, Field(ge=1.0)] = 1e4,
) -> Curve:
    """One-cycle (Smith): cosine rise from lr/div_factor to lr, then cosine fall to lr/(div*final_div).

    It has its own warm-up (pct_start); scheduler.warmup_steps must stay 0.

    Args:
        pct_start: share of the steps spent rising.
        div_factor: the starting lr is lr / div_factor.
        final_div_factor: the last lr is the starting lr / final_div_factor.
    """
    if warmup_steps:
        raise ValueError("onecycle has its own warm-up (pct_start): set scheduler.warmup_steps to 0")
    rise = max(1, round(pct_start * total_steps))
    start, end = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)

    def anneal(a: float, b: float, p: float) -> float:
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    def curve(s: int) -> float:
        if s < rise:
            return anneal(start, 1.0, s / rise)
        return anneal(1.0, end, (s - rise) / max(1, total_steps - rise))

    return curve


@schedulers.register("lr_range")
def lr_range(total_steps: int, warmup_steps: int, /, *, end_factor: Annotated[float, Field(gt=1.0)] = 1e8) -> Curve:
    """Exponential ramp from lr to end_factor * lr over the run: the LR range test (`mlrun lr-find`).

    Args:
        end_factor: the last step's lr, as a multiple of lr (each step multiplies by the same factor).
    """
    span = max(1, total_steps - warmup_steps - 1)
    return lambda s: end_factor ** (min(max(s - warmup_steps, 0), span) / span)


class Plateau:
    """Multiplier that drops by `factor` when `monitor` has not improved for `patience` evaluations."""

    def __init__(self, monitor: str, mode: str, factor: float, patience: int, threshold: float, min_lr_ratio: float):
        self.monitor, self.mode, self.factor = monitor, mode, factor
        self.patience, self.threshold, self.min_lr_ratio = patience, threshold, min_lr_ratio
        self.scale, self.best, self.bad_evals = 1.0, None, 0

    def __call__(self, step: int) -> float:
        return self.scale

    def observe(self, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            return
        value = metrics[self.monitor]
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (value - self.best) < -self.threshold * abs(self.best):
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.patience:
            self.scale, self.bad_evals = max(self.min_lr_ratio, self.scale * self.factor), 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad_evals = state["scale"], state["best"], state["bad_evals"]


# watches: (the setting naming a logged figure the schedule reacts to, its default); checked at build.
@schedulers.register("plateau", watches=("monitor", "val/loss"))
def plateau(
    total_steps: int,
    warmup_steps: int,
    /,
    *,
    monitor: str = "val/loss",
    mode: Literal["min", "max"] = "min",
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1,
    patience: Annotated[int, Field(ge=0)] = 3,
    threshold: Annotated[float, Field(ge=0.0)] = 1e-4,
    min_lr_ratio: Ratio = 0.0,
) -> Curve:
    """Reduce the lr by `factor` when `monitor` stops improving (checked at each evaluation).

    Args:
        monitor: logged figure to watch, e.g. val/loss.
        mode: min or max: which direction is better.
        factor: multiplier applied at each reduction.
        patience: evaluations without improvement before reducing.
        threshold: relative change that counts as an improvement.
        min_lr_ratio: the floor, as a fraction of lr.
    """
    return Plateau(monitor, mode, factor, patience, threshold, min_lr_ratio)
