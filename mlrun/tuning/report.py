"""What a study leaves in runs/<name>/tune/: trials.csv, best.yaml, importances.json and PNG plots,
and the end report's figures: the compute the study spent and how many trials came near the best."""

from __future__ import annotations

import contextlib
import csv
import json
import warnings
from pathlib import Path

import yaml

from mlrun.config.load import load_config
from mlrun.tuning.space import as_override, decode


def trial_line(trial) -> str:
    """One line per finished trial, for the live log."""
    from mlrun.tracking.figures import format_figure, format_setting

    if trial.values is None:
        value = ""
    elif len(trial.values) == 1:
        value = f" value {format_figure(trial.values[0])}"
    else:  # a multi-objective study (compress search): every objective's value
        value = " values " + ", ".join(format_figure(v) for v in trial.values)
    duration = f" ({trial.duration.total_seconds():.1f}s)" if trial.duration else ""
    params = " ".join(f"{k}={format_setting(v)}" for k, v in trial.params.items())
    error = f" error: {trial.user_attrs['error'].splitlines()[0]}" if "error" in trial.user_attrs else ""
    origin = origin_of(trial)
    origin = "" if origin == "sampler" else f" [{origin}]"
    return f"trial {trial.number:>4} {trial.state.name:<8}{value}{duration}{origin} {params}{error}"


def record_failure(trial, exc: BaseException) -> None:
    """A failed trial's error, for its line and trials.csv: a run's failure without its advice on resuming
    (a trial is not resumed by hand). Skipped when the storage cannot take it: it may be what failed."""
    from mlrun.errors import RunFailed

    with contextlib.suppress(Exception):
        if "error" not in trial.user_attrs:
            trial.set_user_attr("error", exc.reason if isinstance(exc, RunFailed) else str(exc))


def first_failure(study) -> dict | None:
    """The first failed trial's number and recorded error (None when no trial failed)."""
    import optuna

    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    return {"number": failed[0].number, "error": failed[0].user_attrs.get("error", "")} if failed else None


def origin_of(trial) -> str:
    """Where a trial's values came from: the config (enqueued), a step near trial n (local search), the sampler."""
    from mlrun.tuning.local_search import NEAR_TRIAL

    if trial.user_attrs.get("from_config"):
        return "config"
    if NEAR_TRIAL in trial.system_attrs:
        return f"near trial {trial.system_attrs[NEAR_TRIAL]}"
    return "sampler"


def write_csv(study, path: Path) -> None:
    keys = sorted({k for t in study.trials for k in t.params})
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["number", "state", "value", "duration_s", "epochs", "steps", "origin", *keys, "error"])
        for t in study.trials:
            duration = t.duration.total_seconds() if t.duration else ""
            out.writerow(
                [
                    t.number,
                    t.state.name,
                    t.value,
                    duration,
                    t.user_attrs.get("epochs", ""),
                    t.user_attrs.get("steps", ""),
                    origin_of(t),
                    *(t.params.get(k, "") for k in keys),
                    t.user_attrs.get("error", ""),
                ]
            )


def compute_spent(study) -> dict:
    """Training epochs and optimizer steps summed over every trial that trained, pruned and failed included.

    Epochs (fractional: a trial pruned after 3.5 epochs counts 3.5) compare trials of different
    sampled batch sizes; steps do not, and are given beside them.
    """
    epochs = [t.user_attrs.get("epochs", 0.0) for t in study.trials]
    pruned = [t.user_attrs.get("epochs", 0.0) for t in study.trials if t.state.name == "PRUNED"]
    return {
        "epochs": round(sum(epochs), 2),
        "steps": sum(t.user_attrs.get("steps", 0) for t in study.trials),
        "pruned_epochs": round(sum(pruned), 2),
        "trials": sum(1 for t in study.trials if "epochs" in t.user_attrs),  # those that recorded it
    }


def near_best(study, tune) -> dict:
    """The completed trials whose value lies within `tune.near_best` of the best (metric's units)."""
    completed = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    best = study.best_value if completed else None
    numbers = [t.number for t in completed if abs(t.value - best) <= tune.near_best + 1e-12]
    return {"metric": tune.metric, "tolerance": tune.near_best, "trials": len(numbers), "numbers": numbers}


def write_best_config(study, path: Path, overrides: list[str], tune, out: Path) -> dict:
    """A complete config with the best values that `mlrun train` accepts as it is."""
    base = load_config(path, overrides)
    best = study.best_trial
    params = {k: decode(v, tune.space[k]) for k, v in best.params.items()}
    chosen = [as_override(k, v) for k, v in params.items()]
    config = load_config(path, [*overrides, *chosen, f"name={base.name}-best", "tune=null"])
    header = f"# Best trial {best.number} of study '{study.study_name}': {tune.metric} = {best.value:.6g}\n"
    out.write_text(header + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return params


def write_importances(study, folder: Path) -> dict[str, float]:
    import optuna

    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) < 2 or not completed[0].params:
        return {}
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every completed trial sampled the same values
        return {}
    (folder / "importances.json").write_text(json.dumps(importances, indent=2) + "\n")
    return importances


def write_plots(study, folder: Path, with_importances: bool) -> list[str]:
    """history.png and importances.png (matplotlib); none when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: clusters have no display
        from optuna.visualization import matplotlib as plots
    except ImportError:
        return []
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for name, plot in [
            ("history", plots.plot_optimization_history),
            ("importances", plots.plot_param_importances if with_importances else None),
        ]:
            if plot is None:
                continue
            axes = plot(study)
            axes.figure.tight_layout()
            axes.figure.savefig(folder / f"{name}.png", dpi=100)
            matplotlib.pyplot.close(axes.figure)
            written.append(f"{name}.png")
    return written
