"""A study whose trials train on several processes (`torchrun ... -m mlrun tune CONFIG`).

Only rank 0 talks to the storage: it asks Optuna for a trial, broadcasts the sampled values, and at
every evaluation reports the metric and broadcasts the pruner's decision, so all ranks stop a pruned
trial at the same step. Rank 0 then tells Optuna how the trial ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from mlrun.callbacks import Callback
from mlrun.config.load import load_config
from mlrun.errors import RunFailed, UsageError
from mlrun.tuning.objective import figure, trial_overrides
from mlrun.tuning.report import trial_line
from mlrun.tuning.space import suggest


def _broadcast(value: Any) -> Any:
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


class SharedPruningReporter(Callback):
    """Rank 0 reports and asks the pruner; every rank follows its answer."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_evaluate(self, metrics: dict[str, float], state: Any) -> None:
        prune = False
        if self.trial is not None and self.metric in metrics:
            self.trial.report(metrics[self.metric], step=state.step)
            prune = self.trial.should_prune()
        if _broadcast(prune):
            state.should_stop, state.stop_reason = True, "pruned"


def run_distributed_trials(path: Path, overrides: list[str], tune, tune_dir: Path, trials: int, study) -> None:
    """Rank 0 passes its study; the other ranks pass None."""
    import optuna

    from mlrun.engine.run import run_training

    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    main = PartialState().is_main_process
    while _broadcast(main and len(study.get_trials(states=ended)) < trials):
        trial = study.ask() if main else None
        params, number = _broadcast(
            ({k: suggest(trial, k, s) for k, s in tune.space.items()}, trial.number) if main else None
        )
        name = f"trial-{number:04d}"
        try:
            config = load_config(path, trial_overrides(overrides, params, name, tune_dir))
            state = run_training(
                config, resume="never", overwrite=True, callbacks=(SharedPruningReporter(trial, tune.metric),)
            )
        except (UsageError, RunFailed) as exc:
            if main:
                trial.set_user_attr("error", str(exc))
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        if main:
            trial.set_user_attr("steps", state.step)
            trial.set_user_attr("samples_seen", state.samples_seen)
            if state.stop_reason == "pruned":
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, figure(state, tune.metric))
            print(trial_line(study.trials[number]), flush=True)
