"""A trial: sampled values applied as overrides, a full training run, its metric reported to the pruner."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from mlrun.callbacks import Callback
from mlrun.config.load import load_config
from mlrun.config.schema import TuneConfig
from mlrun.errors import StudyMisconfigured, UsageError, did_you_mean
from mlrun.tuning.space import as_override, suggest
from mlrun.tuning.tracked import trial_tracking


def broadcast(value: Any) -> Any:
    """Rank 0's value on every process (the value itself when there is one process)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if PartialState().num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


class PruningReporter(Callback):
    """Rank 0 reports the tuned figure at every evaluation and asks the pruner; every rank follows.

    The pruner's resource is the number of evaluations, not optimizer steps: with `eval_every` in
    epochs, trials with different sampled batch sizes are then compared after the same number of
    epochs (in steps, a batch-512 trial's first epoch would be weighed against a batch-16 trial's
    first three steps). `trial` is None on the other ranks of a trial that trains on several processes.
    It also keeps the trial's best evaluation, its value under `tune.value: best`.
    """

    def __init__(self, trial, tune: TuneConfig):
        self.trial, self.metric = trial, tune.metric
        self.mode = "max" if tune.direction == "maximize" else "min"
        self.evaluations = 0
        self.best: float | None = None  # the trial's best evaluation of the metric (tune.value: best)

    def on_evaluate(self, metrics: dict[str, float], state: Any) -> None:
        from mlrun.engine.early_stopping import improved

        self.evaluations += 1
        if self.evaluations == 1 and self.metric.startswith("val/"):  # train/ figures may come later
            check_metric_logged(self.metric, metrics)
        value, prune = metrics.get(self.metric), False
        if value is not None:
            if math.isfinite(value) and improved(value, self.best, self.mode):  # a NaN would stick as the best
                self.best = value
            if self.trial is not None:
                self.trial.report(value, step=self.evaluations)
                # At the last step the trial has trained in full: it completes, whatever the pruner says.
                prune = state.step < state.total_steps and self.trial.should_prune()
        if broadcast(prune):  # all ranks stop a pruned trial at the same step
            state.should_stop, state.stop_reason = True, "pruned"


def trial_overrides(overrides: list[str], params: dict[str, Any], name: str, output_dir: Path) -> list[str]:
    """The overrides of one run: the user's, the sampled values, its own folder, the study's tracking."""
    return [
        *overrides,
        *(as_override(k, v) for k, v in params.items()),
        f"name={name}",
        f"output_dir={output_dir}",
        "tune=null",
        trial_tracking(output_dir),
    ]


def trial_value(state, reporter: PruningReporter, tune: TuneConfig) -> float:
    """What Optuna ranks a completed trial by: its last value of tune.metric, or its best evaluation.
    Without a finite evaluation, the last value (a NaN fails the trial) or the error naming what was logged."""
    if tune.value == "best" and reporter.best is not None:
        return reporter.best
    return figure(state, tune.metric)


def figure(state, metric: str) -> float:
    figures = {**state.last_train, **state.last_eval}
    if metric not in figures:
        logged = ", ".join(sorted(figures))
        raise UsageError(f"tune.metric: '{metric}' was never logged;{did_you_mean(metric, figures)} logged: {logged}")
    return figures[metric]


def check_metric_logged(metric: str, figures: dict[str, float]) -> None:
    """At a trial's first evaluation: a tune.metric that is not among its figures would fail every trial of
    the study after training it in full, so the study stops here (exit 2)."""
    if metric not in figures:
        raise StudyMisconfigured(
            f"tune.metric: '{metric}' is not among the figures the first trial's evaluation logged "
            f"({', '.join(sorted(figures))}): set tune.metric to one of them.{did_you_mean(metric, figures)}"
        )


def train_trial(path: Path, overrides: list[str], tune: TuneConfig, tune_dir: Path, trial, params: dict, number: int):
    """One trial's full run in tune_dir/trial-<number>; records what it spent on `trial` (rank 0's).

    Returns the run's state and the trial's value (None for a pruned trial)."""
    from mlrun.engine.run import run_training

    name = f"trial-{number:04d}"
    if trial is not None:
        trial.set_user_attr("run_dir", str(tune_dir / name))
        trial.set_user_attr("pid", os.getpid())  # which worker process ran it
    # A sampled combination the config rejects fails the trial alone (its caller records the error).
    config = load_config(path, trial_overrides(overrides, params, name, tune_dir))
    started, started_at = time.perf_counter(), time.time()
    reporter = PruningReporter(trial, tune)
    try:
        state = run_training(config, resume="never", overwrite=True, callbacks=(reporter,))
    finally:  # a failed trial spent compute too: its summary.json says how much
        if trial is not None:
            record_compute(trial, tune_dir / name / "summary.json", started_at)
            trial.set_user_attr("train_time_s", round(time.perf_counter() - started, 3))
    if trial is not None:
        trial.set_user_attr("samples_seen", state.samples_seen)
    return state, None if state.stop_reason == "pruned" else trial_value(state, reporter, tune)


def record_compute(trial, summary_path: Path, started_at: float) -> None:
    """The trial's epochs (fractional) and optimizer steps, from the summary.json its run wrote.

    Epochs are the unit `mlrun tune` reports compute in: they compare trials of different sampled
    batch sizes, where steps do not. A run that never started training wrote none (an older one
    left in a reused trial folder is not this trial's): it spent nothing.
    """
    try:
        if summary_path.stat().st_mtime < started_at:
            return
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return
    trial.set_user_attr("epochs", summary.get("epochs", 0.0))
    trial.set_user_attr("steps", summary.get("steps", 0))


def objective(path: Path, overrides: list[str], tune: TuneConfig, tune_dir: Path):
    """The function Optuna calls per trial (trials that train on one process)."""
    import optuna

    def run(trial) -> float:
        params = {key: suggest(trial, key, spec) for key, spec in tune.space.items()}
        state, value = train_trial(path, overrides, tune, tune_dir, trial, params, trial.number)
        if value is None:
            raise optuna.TrialPruned(f"pruned at step {state.step}")
        return value

    return run
