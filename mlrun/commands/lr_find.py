"""`mlrun lr-find CONFIG [k=v ...] [--steps N] [--start LR] [--end LR] [--method steepest|min10] [--json]`.

The learning-rate range test: trains the config for up to N steps into runs/<name>/lr_find/ with
the lr growing exponentially from --start to --end (the `lr_range` schedule, the usual training
loop, every step logged), stops once the loss blows up, and suggests a rate with its reasoning.
Writes lr_find.png and lr_find.json beside the sweep's metrics.jsonl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mlrun.config.load import load_config
from mlrun.errors import UsageError
from mlrun.jsonout import print_json

METHODS = ("steepest", "min10")


def run_lr_find(
    path: Path, overrides: list[str], steps: int, start: float, end: float, method: str, json_output: bool
) -> None:
    if steps < 10:
        raise UsageError("--steps must be at least 10 (a few hundred gives a readable curve)")
    if not (0 < start < end):
        raise UsageError(f"--start ({start:g}) and --end ({end:g}) must satisfy 0 < start < end, e.g. 1e-7 and 10")
    if method not in METHODS:
        raise UsageError(f"--method: unknown '{method}'; choose {' or '.join(METHODS)}")
    user = load_config(path, overrides)
    folder = Path(user.output_dir) / user.name / "lr_find"
    sweep = load_config(path, [*overrides, *sweep_overrides(user.output_dir, user.name, steps, start, end)])

    from mlrun.engine.run import run_training
    from mlrun.tuning.lr_range import DivergenceStop, plot, smoothing_for, suggest

    quiet = not json_output
    if quiet:
        print(f"mlrun: lr-find: up to {steps} steps, lr {start:g} -> {end:g} (exponential) -> {folder}", flush=True)
    beta = smoothing_for(steps)
    state = run_training(sweep, overwrite=True, callbacks=(DivergenceStop(beta),))
    lrs, losses = read_curve(folder / "metrics.jsonl", start)
    if len([v for v in losses if math.isfinite(v)]) < 5:
        raise UsageError(
            f"lr-find: the loss was not finite for long enough to read a curve ({len(losses)} steps); "
            "lower --start or --end"
        )
    suggestion = suggest(lrs, losses, beta, method)
    plot(lrs, losses, beta, suggestion, folder / "lr_find.png")
    report = {
        "suggested_lr": suggestion.lr,
        "method": suggestion.method,
        "reason": suggestion.reason,
        "steepest_lr": suggestion.steepest_lr,
        "min_loss_lr": suggestion.min_loss_lr,
        "min10_lr": suggestion.min_loss_lr / 10,
        "diverged_at_lr": suggestion.diverged_at_lr,
        "steps_run": state.step,
        "stopped_early": state.step < steps,
        "smoothing": beta,
        "start_lr": start,
        "end_lr": end,
        "plot": str(folder / "lr_find.png"),
        "curve": [{"lr": lr, "loss": loss} for lr, loss in zip(lrs, losses)],
        # No rate from a curve too short or too flat: `reason` says what to change.
        "next": f"mlrun train {path} optimizer.lr={suggestion.lr:.3g}" if suggestion.lr is not None else None,
    }
    (folder / "lr_find.json").write_text(json.dumps(report, indent=2) + "\n")
    if json_output:
        print_json(report)
        return
    print(f"mlrun: lr-find: {state.step} steps{' (stopped: the loss diverged)' if report['stopped_early'] else ''}")
    if suggestion.diverged_at_lr is None:
        print(f"  note: the loss did not blow up by lr {lrs[-1]:.3g}; a larger --end shows where it does")
    if suggestion.lr is None:
        print("  no suggestion: the curve cannot be judged")
    else:
        print(f"  suggested optimizer.lr: {suggestion.lr:.3g} ({suggestion.method})")
    print(f"  why: {suggestion.reason}")
    print(f"  plot: {report['plot']}")
    if report["next"]:
        print(f"  next: {report['next']}")


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


def read_curve(metrics: Path, start: float) -> tuple[list[float], list[float]]:
    """(lr each step trained with, its training loss) from the sweep's metrics.jsonl.

    A line's train/lr is the rate after that step's schedule update, i.e. the next step's.
    """
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    train = [line for line in lines if "train/loss" in line]
    lrs = [start] + [line["train/lr"] for line in train[:-1]]
    return lrs, [float(line["train/loss"]) for line in train]
