"""`mlrun tune CONFIG [k=v ...] [--trials N] [--timeout S] [--storage URL] [--study NAME] [--workers N] [--json]`.

Searches the `tune.space` keys of the config with Optuna; each trial is a full run in
runs/<name>/tune/trial-<n>/. A rerun continues the study. `--workers N` runs N processes against
the same storage on this host; on a cluster, N copies of the command share a database URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
    config = load_config(path, overrides)
    if config.tune is None:
        raise UsageError(
            f"{path}: no tune: section. Add one with metric, direction and space (see README), "
            "or pass tune={...} as an override"
        )
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    tune = config.tune
    from mlrun.tuning.space import check_space

    check_space(path, overrides, tune)
    tune_dir = Path(config.output_dir) / config.name / "tune"
    from mlrun.engine.run_dir import check_writable

    check_writable(tune_dir)
    tune_dir.mkdir(parents=True, exist_ok=True)
    if tune.strategy == "pbt":
        from mlrun.tuning.pbt import run_pbt
        from mlrun.tuning.tracked import open_study_run

        study_run = open_study_run(config, tune_dir, f"{config.name} pbt")
        report = run_pbt(path, overrides, config, tune_dir)
        if study_run is not None:
            leader = {"number": report["best_member"], "params": report["best_params"]}
            final = {m["id"]: m["value"] for m in report["rounds"][-1]["members"]}
            study_run.finish(final, {"best": {**leader, "value": final[leader["number"]]}}, tune.metric)
        if json_output:
            print_json(report)
        else:
            print(f"mlrun: population-based training done: {report['summary']}")
        return
    run_study(
        path,
        overrides,
        config,
        tune_dir,
        trials or tune.trials,
        timeout or tune.timeout_s,
        storage or tune.storage,
        study_name or config.name,
        workers,
        json_output,
        worker,
    )


def run_study(path, overrides, config, tune_dir, trials, timeout, storage, study_name, workers, json_output, worker):
    from mlrun.tuning import report
    from mlrun.tuning.objective import objective
    from mlrun.tuning.study import make_pruner, make_sampler, make_storage, optuna_module, warn_small_generation

    optuna = optuna_module()
    tune = config.tune
    processes = _training_processes()
    if processes.num_processes > 1 and workers > 1:
        raise UsageError(
            "--workers starts more studies on this host; under torchrun each trial already trains on "
            "several processes: use one or the other"
        )
    main = processes.is_main_process
    if main and not worker and (note := warn_small_generation(tune.sampler, trials)):
        print(f"mlrun: warning: {note}", file=sys.stderr, flush=True)
    study, store_text, study_run = None, None, None
    if main:  # under several processes only rank 0 talks to the storage
        store, store_text = make_storage(storage, tune_dir, workers)
        study = optuna.create_study(
            storage=store,
            sampler=make_sampler(tune.sampler, tune),
            pruner=make_pruner(tune.pruner),
            study_name=study_name,
            direction=tune.direction,
            load_if_exists=True,
        )
    if main and not worker:  # before workers start: they read the trials' trackers it writes
        from mlrun.tuning.tracked import open_study_run

        study_run = open_study_run(config, tune_dir, study_name)
    if processes.num_processes > 1:
        from mlrun.tuning.distributed import run_distributed_trials

        run_distributed_trials(path, overrides, tune, tune_dir, trials, study)
        if main:
            _finish_study_run(study_run, study, _report(study, path, overrides, tune, tune_dir, json_output), tune)
        return
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    helpers = [] if worker else _start_workers(path, overrides, trials, timeout, store_text, study_name, workers - 1)
    if len(study.get_trials(states=ended)) < trials:
        if not worker:
            print(
                f"mlrun: study '{study_name}' ({store_text}): {len(study.trials)} trials so far, target {trials}",
                flush=True,
            )
        from mlrun.tuning.storage import optimize

        optimize(  # study.optimize that survives a lost database connection
            study,
            objective(path, overrides, tune, tune_dir),
            target=trials,
            timeout=timeout,
            callbacks=[
                optuna.study.MaxTrialsCallback(trials, states=ended),
                lambda s, t: print(report.trial_line(t), flush=True),
            ],
            catch=(UsageError, RunFailed),
        )
    for helper in helpers:
        helper.wait()
    if not worker:
        _finish_study_run(study_run, study, _report(study, path, overrides, tune, tune_dir, json_output), tune)


def _finish_study_run(study_run, study, summary: dict, tune) -> None:
    if study_run is not None:
        values = {trial.number: trial.value for trial in study.trials if trial.value is not None}
        study_run.finish(values, summary, tune.metric)


def _training_processes():
    """The process group trials train on (one process unless launched by torchrun / accelerate launch)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _start_workers(path, overrides, trials, timeout, storage, study_name, count) -> list[subprocess.Popen]:
    command = [
        sys.executable,
        "-m",
        "mlrun",
        "tune",
        str(path),
        *overrides,
        "--trials",
        str(trials),
        "--storage",
        storage,
        "--study",
        study_name,
        "--worker",
    ]
    if timeout:
        command += ["--timeout", str(timeout)]
    # Each worker numbered (MLRUN_TUNE_WORKER) for its log; samplers seed each trial by its number (tuning/study.py).
    return [
        subprocess.Popen(command, env={**os.environ, "MLRUN_TUNE_WORKER": str(index)}, stdout=sys.stderr)
        for index in range(1, count + 1)
    ]


def _report(study, path, overrides, tune, tune_dir, json_output) -> dict:
    import optuna

    from mlrun.tuning import report

    report.write_csv(study, tune_dir / "trials.csv")
    counts = {s.name.lower(): len(study.get_trials(states=(s,))) for s in optuna.trial.TrialState}
    summary = {"study": study.study_name, "trials": len(study.trials), "states": counts, "folder": str(tune_dir)}
    if counts["complete"]:
        summary["best"] = {
            "number": study.best_trial.number,
            "value": study.best_value,
            "params": report.write_best_config(study, path, overrides, tune, tune_dir / "best.yaml"),
        }
        summary["importances"] = report.write_importances(study, tune_dir)
        summary["plots"] = report.write_plots(study, tune_dir, bool(summary["importances"]))
    if json_output:
        print_json(summary)
        return summary
    print(
        f"mlrun: {summary['trials']} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed"
    )
    if "best" in summary:
        best = summary["best"]
        print(f"mlrun: best trial {best['number']}: {tune.metric} = {best['value']:.6g} with {best['params']}")
        print(
            f"mlrun: wrote {tune_dir / 'best.yaml'} (train it: mlrun train {tune_dir / 'best.yaml'}), "
            f"trials.csv, {', '.join(summary['plots']) or 'no plots'}"
        )
    return summary
