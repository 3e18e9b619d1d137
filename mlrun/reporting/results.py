"""The figures compare shows per run: the chosen metric's best and final values, and the run's cost.

The metric is `--metric`, else the one the runs were steered by (train.best / early stopping
monitor, tune.metric), else the first validation metric, else val/loss. Whether lower is better
comes from the same config keys, else from the name (losses and errors are minimised).
"""

from __future__ import annotations

from typing import Any

from mlrun.errors import UsageError, did_you_mean
from mlrun.figures import better
from mlrun.reporting.runs import RunRecord, curve


def logged_keys(runs: list[RunRecord]) -> list[str]:
    logged = {key for run in runs for line in run.history for key in line if key not in ("step", "epoch", "time")}
    return sorted(logged | {key for run in runs for key in (run.summary.get("final") or {})})


def choose_metric(runs: list[RunRecord], metric: str | None) -> str:
    logged = logged_keys(runs)
    if metric is not None:
        if metric not in logged:
            raise UsageError(
                f"--metric: no run logged '{metric}'.{did_you_mean(metric, logged)} "
                f"Logged: {', '.join(logged) or 'nothing yet (no metrics.jsonl)'}."
            )
        return metric
    for run in runs:
        for key in ("train.best.monitor", "train.early_stopping.monitor", "tune.metric"):
            if run.config.get(key) in logged:
                return run.config[key]
    metrics = [key for key in logged if key.startswith("val/") and key != "val/loss"]
    return metrics[0] if metrics else ("val/loss" if "val/loss" in logged else "train/loss")


def lower_is_better(runs: list[RunRecord], metric: str) -> bool:
    """The figure's name first (runs recorded with a wrong default mode would otherwise decide by their
    order on the command line), then what a run's config says of it, else smaller."""
    named = better(metric)
    if named is not None:
        return named == "min"
    for run in runs:
        for monitor, mode in (
            ("train.best.monitor", "train.best.mode"),
            ("train.early_stopping.monitor", "train.early_stopping.mode"),
        ):
            if run.config.get(monitor) == metric and run.config.get(mode) in ("min", "max"):
                return run.config[mode] == "min"
        if run.config.get("tune.metric") == metric and run.config.get("tune.direction"):
            return run.config["tune.direction"] == "minimize"
    return True


def result_row(run: RunRecord, metric: str, minimise: bool) -> dict[str, Any]:
    """One run's figures; None where the run has not recorded one (still running, crashed early)."""
    steps, values = curve(run, metric)
    best_at = None
    if values:
        pick = min if minimise else max
        best_at = pick(range(len(values)), key=values.__getitem__)
    summary = run.summary
    final = (summary.get("final") or {}).get(metric, values[-1] if values else None)
    return {
        "run": run.name,
        "path": str(run.path),
        "status": summary.get("status", "running" if run.history else "not started"),
        "steps": summary.get("steps", run.history[-1]["step"] if run.history else None),
        f"best {metric}": values[best_at] if best_at is not None else None,
        "best step": steps[best_at] if best_at is not None else None,
        f"final {metric}": final,
        "wall time s": summary.get("wall_time_s"),
        "samples/s": summary.get("samples_per_s"),
        "peak memory MiB": summary["peak_memory_bytes"] / 2**20 if summary.get("peak_memory_bytes") else None,
    }
