"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates", section 3.3).

Train a few hundred steps while the learning rate grows exponentially from tiny to huge; the loss
first stays flat (too small to learn), then falls, then blows up. A good rate sits where the loss
falls fastest, before the blow-up. The sweep is an ordinary run of the one training loop with the
`lr_range` schedule and `DivergenceStop`: `plan_sweep` turns a config into it, `run_sweep` trains
it, reads its curve back, suggests a value and writes lr_find.json and lr_find.png.

Try: `mlrun lr-find configs/quickstart.yaml`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrun.callbacks import Callback
from mlrun.config.load import load_config, override_key, train_command
from mlrun.errors import UsageError
from mlrun.tuning.lr_suggest import DIVERGED, Suggestion, smooth_centred, suggest

if TYPE_CHECKING:
    from mlrun.config.schema import ExperimentConfig

METHODS = ("steepest", "min10")  # how `suggest` picks a rate: the steepest fall, or a tenth of the minimum
SMOOTHING = 0.98  # the slowest EMA of the loss: the per-batch loss is too noisy to differentiate
FASTEST_SMOOTHING = 0.8  # the fastest: an average over ~5 steps, fewer would follow the noise
SWEEP_SHARE = 20  # the EMA averages over ~1/20 of the sweep's steps
DEFAULT_STEPS = 200  # lr-find's --steps default (cli.py repeats it to keep --help light): 25 steps per decade
# Below this the EMA sits at its ~5-step floor, so it covers more than 5% of the sweep, and each decade of
# rates gets fewer than 12.5 training steps (at 1e-7..10): the suggestion moves with --steps (quickstart:
# 1.0e-2 at 60 steps, 4.9e-3 at 100, 1.7e-3 at 200), so a shorter sweep is flagged.
SHORT_SWEEP_STEPS = round(SWEEP_SHARE / (1 - FASTEST_SMOOTHING))  # 100


@dataclass(frozen=True)
class Sweep:
    """A range test ready to run: the sweep's config and the folder it writes (runs/<name>/lr_find/)."""

    config: ExperimentConfig
    folder: Path
    source: Path  # the user's config file and overrides, for the suggested `mlrun train` line
    overrides: tuple[str, ...]
    steps: int
    start: float
    end: float


def plan_sweep(path: Path, overrides: list[str], steps: int, start: float, end: float) -> Sweep:
    """The user's config turned into a sweep from `start` to `end` over up to `steps` steps."""
    user = load_config(path, overrides)
    sweep = load_config(path, [*overrides, *sweep_overrides(user.output_dir, user.name, steps, start, end)])
    return Sweep(sweep, Path(user.output_dir) / user.name / "lr_find", path, tuple(overrides), steps, start, end)


def sweep_overrides(output_dir: str, name: str, steps: int, start: float, end: float) -> list[str]:
    """The config changes that turn a training config into a range-test sweep."""
    return [
        f"output_dir={Path(output_dir) / name}",
        "name=lr_find",
        f"optimizer.lr={start!r}",
        f"scheduler={{name: lr_range, end_factor: {end / start!r}}}",
        f"train.max_steps={steps}",
        "train.epochs=null",
        "train.log_every=1",  # every step's loss is a point of the curve
        f"train.eval_every={steps + 1}st",  # one evaluation, at the end
        "train.checkpoint_every=null",
        "train.early_stopping=null",
        "train.best=null",
        "train.on_nonfinite=skip",  # a NaN ends the sweep through DivergenceStop, not as a failed run
        "tracking=[jsonl]",
    ]


def run_sweep(sweep: Sweep, method: str) -> dict:
    """Train the sweep, read its curve, suggest a rate with `method`, draw lr_find.png; returns the report
    (also written to lr_find.json)."""
    from mlrun.engine.run import run_training

    beta = smoothing_for(sweep.steps)
    state = run_training(sweep.config, overwrite=True, callbacks=(DivergenceStop(beta),))
    lrs, losses = read_curve(sweep.folder / "metrics.jsonl", sweep.start)
    if len([v for v in losses if math.isfinite(v)]) < 5:
        raise UsageError(
            f"lr-find: the loss was not finite for long enough to read a curve ({len(losses)} steps); "
            "lower --start or --end"
        )
    suggestion = suggest(lrs, losses, beta, method)
    plot(lrs, losses, beta, suggestion, sweep.folder / "lr_find.png")
    report = {
        "suggested_lr": suggestion.lr,
        "method": suggestion.method,
        "reason": suggestion.reason,
        "steepest_lr": suggestion.steepest_lr,
        "min_loss_lr": suggestion.min_loss_lr,
        "min10_lr": suggestion.min10_lr,
        "diverged_at_lr": suggestion.diverged_at_lr,
        "steps_run": state.step,
        "stopped_early": state.step < sweep.steps,
        "smoothing": beta,
        "start_lr": sweep.start,
        "end_lr": sweep.end,
        "plot": str(sweep.folder / "lr_find.png"),
        "caution": short_sweep_caution(sweep.steps) if suggestion.lr is not None else None,
        "curve": [{"lr": lr, "loss": loss} for lr, loss in zip(lrs, losses)],
        # No rate from a curve too short or too flat: `reason` says what to change.
        "next": (
            train_command(sweep.source, [*kept_overrides(sweep.overrides), f"optimizer.lr={suggestion.lr:.3g}"])
            if suggestion.lr is not None
            else None
        ),
    }
    (sweep.folder / "lr_find.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def short_sweep_caution(steps: int) -> str | None:
    """One line when the sweep is too short for its suggestion to hold still (SHORT_SWEEP_STEPS says why)."""
    if steps >= SHORT_SWEEP_STEPS:
        return None
    return (
        f"a sweep under {SHORT_SWEEP_STEPS} steps moves the suggestion (its smoothing covers more than "
        f"{100 // SWEEP_SHARE}% of it); confirm with --steps {DEFAULT_STEPS} (the default)"
    )


def kept_overrides(overrides: tuple[str, ...]) -> list[str]:
    """The user's overrides for the suggested `mlrun train` line, less their own optimizer.lr: the suggestion
    replaces it, and `optimizer.lr=100 optimizer.lr=0.0104` reads as two answers."""
    return [text for text in overrides if override_key(text) != "optimizer.lr"]


def read_curve(metrics: Path, start: float) -> tuple[list[float], list[float]]:
    """(lr each step trained with, its training loss) from the sweep's metrics.jsonl.

    A line's train/lr is the rate after that step's schedule update, i.e. the next step's.
    """
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    train = [line for line in lines if "train/loss" in line]
    logged = [line["train/lr"] for line in train]
    if len(logged) >= 2 and logged[1] > 0:
        # train/lr is the largest parameter group's (param_groups lr_scale 10 logs 10 x optimizer.lr): back to
        # optimizer.lr's units from the ramp's constant ratio, so the suggestion is a value for optimizer.lr.
        logged = [lr / (logged[0] ** 2 / (start * logged[1])) for lr in logged]
    lrs = [start] + logged[:-1]
    return lrs, [float(line["train/loss"]) for line in train]


def smoothing_for(steps: int) -> float:
    """EMA factor averaging over ~5% of the sweep: a slower average lags the curve to higher rates
    (fastai's fixed 0.98 averages over 50 steps, two decades of a 200-step sweep from 1e-7 to 10)."""
    return min(SMOOTHING, max(FASTEST_SMOOTHING, 1.0 - SWEEP_SHARE / steps))


class DivergenceStop(Callback):
    """Stops the sweep once the smoothed training loss exceeds `factor` x its minimum, or is not finite.

    Reads `state.last_train` (logged every step during a sweep), so it acts one step late.
    """

    def __init__(self, beta: float, factor: float = DIVERGED, skip_steps: int = 5):
        self.factor, self.beta, self.skip_steps = factor, beta, skip_steps
        self.average, self.best, self.seen, self.last_step = 0.0, math.inf, 0, -1

    def on_step_end(self, model, state: Any) -> None:
        loss = state.last_train.get("train/loss")
        if loss is None or state.step - 1 == self.last_step:
            return
        self.last_step = state.step - 1
        if not math.isfinite(loss):
            state.should_stop = True
            return
        self.seen += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        smoothed = self.average / (1 - self.beta**self.seen)
        self.best = min(self.best, smoothed)
        if self.seen > self.skip_steps and smoothed > self.factor * self.best:
            state.should_stop = True


def plot(lrs: list[float], losses: list[float], beta: float, suggestion: Suggestion, path) -> None:
    """Loss against lr (log axis), raw and smoothed, with the suggestion marked; a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(lrs, losses, color="0.75", linewidth=1, label="training loss")
    # Smoothed as `suggest` reads it: up to the blow-up only.
    cut = lrs.index(suggestion.read_until_lr) + 1
    smoothed = smooth_centred(losses[:cut], beta)
    axes.plot(lrs[:cut], smoothed, color="C0", linewidth=2, label=f"smoothed (EMA {beta:.3g}, both directions)")
    if suggestion.lr is not None:
        axes.axvline(
            suggestion.lr, color="C3", linestyle="--", label=f"suggested {suggestion.lr:.2g} ({suggestion.method})"
        )
    axes.set_xscale("log")
    finite = [v for v in [*smoothed, *losses] if math.isfinite(v)]
    low = min(finite)
    if finite and low > 0:  # the blow-up would squash the useful part of the curve
        axes.set_ylim(low * 0.9, min(max(finite), DIVERGED * min(v for v in smoothed if math.isfinite(v)) * 1.2))
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.set_title("learning-rate range test")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
