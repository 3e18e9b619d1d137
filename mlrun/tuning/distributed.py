"""A study whose trials train on several processes (`torchrun ... -m mlrun tune CONFIG`).

Only rank 0 talks to the storage: it asks Optuna for a trial, broadcasts the sampled values, and at
every evaluation reports the metric and broadcasts the pruner's decision (PruningReporter), so all
ranks stop a pruned trial at the same step. Rank 0 then tells Optuna how the trial ended.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState

from mlrun.errors import RunFailed, UsageError
from mlrun.tuning.objective import broadcast, train_trial
from mlrun.tuning.report import record_failure, trial_line
from mlrun.tuning.space import suggest


def run_distributed_trials(path: Path, overrides: list[str], tune, tune_dir: Path, trials: int, study) -> None:
    """Rank 0 passes its study; the other ranks pass None."""
    import optuna

    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    main = PartialState().is_main_process
    while broadcast(main and len(study.get_trials(states=ended)) < trials):
        trial = study.ask() if main else None
        sampled = ({k: suggest(trial, k, s) for k, s in tune.space.items()}, trial.number) if main else None
        params, number = broadcast(sampled)
        try:
            _, value = train_trial(path, overrides, tune, tune_dir, trial, params, number)
        except (UsageError, RunFailed) as exc:
            if main:
                record_failure(trial, exc)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        if main:
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, value)
            print(trial_line(study.trials[number]), flush=True)
