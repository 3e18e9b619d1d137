"""`mlrun tune CONFIG [k=v ...] [--trials N] [--timeout S] [--storage URL] [--study NAME] [--workers N] [--json]`.

Searches the `tune.space` keys of the config with Optuna; each trial is a full run in
runs/<name>/tune/trial-<nnnn>/. A rerun continues the study. `--workers N` runs N processes against
the same storage on this host; on a cluster, N copies of the command share a database URL.
The search itself is tuning/runner.py; this module reads the arguments and prints the summary.
"""

from __future__ import annotations

from pathlib import Path

from mlrun.config.load import load_config
from mlrun.errors import RunFailed, UsageError
from mlrun.jsonout import print_json


def run_tune(
    path: Path,
    overrides: list[str],
    trials: int | None,
    timeout: float | None,
    storage: str | None,
    study_name: str | None,
    workers: int,
    json_output: bool,
    worker: bool = False,
) -> None:
    if timeout is not None and timeout <= 0:  # no time to start a trial: nothing would run
        raise UsageError(f"--timeout: {timeout:g} seconds leaves no time to start a trial; give a time above 0")
    config = load_config(path, overrides)
    if config.tune is None:
        raise UsageError(
            f"{path}: no tune: section. Add one with metric, direction and space (see README), "
            "or pass tune={...} as an override"
        )
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if config.tune.objectives is not None:  # a compress search runs the trained run's stages, as compress does
        from mlrun.commands.compress import READ_KEYS, check_overrides_read

        check_overrides_read(overrides, "a compress search", read=(*READ_KEYS, "tune"))
    if config.tune.strategy == "pbt":
        study_options = {"--trials": trials, "--timeout": timeout, "--storage": storage, "--study": study_name}
        given = [name for name, value in study_options.items() if value is not None] + ["--workers"] * (workers > 1)
        if given:
            raise UsageError(
                f"{', '.join(given)}: options of an Optuna study; population-based training (tune.strategy: pbt) "
                "trains tune.pbt.population members in tune.pbt.rounds rounds in this process: remove them"
            )
    from mlrun.tuning.runner import StudyOptions, run_search

    tune = config.tune
    options = StudyOptions(
        path=path,
        overrides=tuple(overrides),
        trials=trials or tune.trials,
        timeout_s=timeout or tune.timeout_s,
        storage=storage or tune.storage,
        # A compress search is a study of its own (other objectives) beside the training search's.
        study_name=study_name or (f"{config.name}-compress" if tune.objectives is not None else config.name),
        workers=workers,
        worker=worker,
    )
    summary = run_search(config, options)
    if summary is None:  # a --workers helper or a rank other than 0: the main process reports
        return
    failed = none_completed(summary)
    if json_output:
        if failed:  # the error document is the command's one JSON document
            raise RunFailed(failed)
        print_json(summary)
    elif tune.objectives is not None:
        print_front(summary)
    elif tune.strategy == "pbt":
        print(f"mlrun: population-based training done: {summary['summary']}")
    else:
        print_study(summary, tune)
    if failed:
        raise RunFailed(failed)


def counted(number: float, unit: str) -> str:
    """`3 epochs`, `1 epoch`, `2.5 epochs`."""
    return f"{number:.10g} {unit}{'' if number == 1 else 's'}"  # whole counts stay whole, however large


def none_completed(summary: dict) -> str | None:
    """A study whose every trial failed has no result: what to say (exit 1), else None."""
    counts = summary.get("states", {})
    if counts.get("complete") or not counts.get("fail"):
        return None
    first = summary["first_failure"]
    error = (first["error"] or "no error recorded").rstrip(".")
    return (
        f"no trial of the study completed ({counts['fail']} failed); the first, trial {first['number']}: "
        f"{error}. Every trial's error is in {Path(summary['folder']) / 'trials.csv'}"
    )


def print_study(summary: dict, tune) -> None:
    from mlrun.tracking.figures import format_figure

    counts, tune_dir, compute = summary["states"], Path(summary["folder"]), summary["compute"]
    print(
        f"mlrun: {summary['trials']} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed"
    )
    epochs, steps = counted(compute["epochs"], "epoch"), counted(compute["steps"], "optimizer step")
    print(
        f"mlrun: compute spent: {epochs} ({steps}) over {counted(summary['trials'], 'trial')}, "
        f"{counted(compute['pruned_epochs'], 'epoch')} of it in pruned trials"
    )
    if "best" in summary:
        best, near = summary["best"], summary["near_best"]
        print(
            f"mlrun: best trial {best['number']}: {tune.metric} = {format_figure(best['value'])} "
            f"(its {tune.value} evaluation) "
            f"with {best['params']}"
        )
        print(
            f"mlrun: {counted(near['trials'], 'completed trial')} within {near['tolerance']:g} of the best "
            f"{tune.metric} (tune.near_best, in the metric's own units)"
        )
        print(
            f"mlrun: wrote {tune_dir / 'best.yaml'} (train it: mlrun train {tune_dir / 'best.yaml'}), "
            f"trials.csv, summary.json, {', '.join(summary['plots']) or 'no plots'}"
        )


def print_front(summary: dict) -> None:
    from mlrun.tracking.figures import format_bytes, format_figure
    from mlrun.tuning.pareto import front_table

    counts, folder = summary["states"], Path(summary["folder"])
    stages = summary["stages"]
    print(
        f"mlrun: {summary['trials']} trials: {counts['complete']} complete, {counts['fail']} failed; "
        f"the study's trials used {stages['used']} stage results and computed {stages['computed']} of them "
        "(chains that begin alike share their stages)"
    )
    if not summary["front"]:
        return
    trained = summary["trained"] or {}
    base = ", ".join(f"{k} {format_figure(v)}" for k, v in trained.get("metrics", {}).items())
    print(
        f"mlrun: Pareto front, {len(summary['front'])} of {counts['complete']} completed trials "
        f"(trained model: {base}, file {format_bytes(trained.get('file_bytes', 0))}, "
        f"b1 {format_figure(trained.get('latency_ms_b1', float('nan')))} ms):"
    )
    print(front_table(summary))
    plot = f"{summary['plot']}, " if summary["plot"] else "no PNG (needs matplotlib and two objectives), "
    # The member best on the first objective (the trial numbered first may be any corner, e.g. chance accuracy).
    first, direction = next(iter(summary["objectives"].items()))
    choose = max if direction == "maximize" else min
    best = choose(summary["front"], key=lambda member: member["values"][first])
    print(
        f"mlrun: wrote {folder / 'pareto.json'}, {plot}trials.csv, summary.json; "
        f"export a member (the best {first}): mlrun export {best['dir']}"
    )
