"""`mlrun lr-find CONFIG [k=v ...] [--steps N] [--start LR] [--end LR] [--method steepest|min10] [--json]`.

The learning-rate range test: trains the config for up to N steps into runs/<name>/lr_find/ with
the lr growing exponentially from --start to --end (the `lr_range` schedule, the usual training
loop, every step logged), stops once the loss blows up, and suggests a rate with its reasoning.
Writes lr_find.png and lr_find.json beside the sweep's metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path

from mlrun.errors import UsageError
from mlrun.jsonout import print_json


def run_lr_find(
    path: Path, overrides: list[str], steps: int, start: float, end: float, method: str, json_output: bool
) -> None:
    from mlrun.tuning.lr_range import METHODS, plan_sweep, run_sweep

    if steps < 10:
        raise UsageError("--steps must be at least 10 (a few hundred gives a readable curve)")
    if not (0 < start < end):
        raise UsageError(f"--start ({start:g}) and --end ({end:g}) must satisfy 0 < start < end, e.g. 1e-7 and 10")
    if method not in METHODS:
        raise UsageError(f"--method: unknown '{method}'; choose {' or '.join(METHODS)}")
    sweep = plan_sweep(path, overrides, steps, start, end)
    if not json_output:
        print(
            f"mlrun: lr-find: up to {steps} steps, lr {start:g} -> {end:g} (exponential) -> {sweep.folder}", flush=True
        )
    report = run_sweep(sweep, method)
    if json_output:
        print_json(report)
    else:
        print_report(report)


def print_report(report: dict) -> None:
    stopped = " (stopped: the loss diverged)" if report["stopped_early"] else ""
    print(f"mlrun: lr-find: {report['steps_run']} steps{stopped}")
    if report["diverged_at_lr"] is None:
        last = report["curve"][-1]["lr"]
        print(f"  note: the loss did not blow up by lr {last:.3g}; a larger --end shows where it does")
    if report["suggested_lr"] is None:
        print("  no suggestion: the curve cannot be judged")
    else:
        print(f"  suggested optimizer.lr: {report['suggested_lr']:.3g} ({report['method']})")
    print(f"  why: {report['reason']}")
    if report["caution"]:
        print(f"  caution: {report['caution']}")
    print(f"  plot: {report['plot']}")
    if report["next"]:
        print(f"  next: {report['next']}")
