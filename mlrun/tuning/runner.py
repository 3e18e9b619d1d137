"""A search from start to end: an Optuna study (here, its worker processes, or trials under torchrun)
or population-based training, and the summary `mlrun tune` prints.

    mlrun tune configs/tune_digits.yaml --workers 2

`run_search` takes the loaded config and one `StudyOptions` (what the command line asked for,
resolved against the config's tune: section) and returns the summary, or None in a process that
reports nothing (a `--workers` helper, a rank other than 0).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mlrun.config.schema import ExperimentConfig
from mlrun.errors import UsageError
from mlrun.figures import better


@dataclass(frozen=True)
class StudyOptions:
    """What `mlrun tune` was asked for; defaults already taken from the config's tune: section."""

    path: Path  # the config file, re-read by every trial with its own overrides
    overrides: tuple[str, ...]  # the user's `key=value` overrides, applied to every trial
    trials: int  # trials the study should hold when the command ends
    timeout_s: float | None  # stop starting trials after this many seconds
    storage: str | None  # journal file path or database URL; None: tune/journal.log
    study_name: str
    workers: int = 1  # processes on this host sharing the study, this one included
    worker: bool = False  # this process was started by --workers: it runs trials and reports nothing


def run_search(config: ExperimentConfig, options: StudyOptions) -> dict | None:
    """Check the space and the folder, then search; the summary, or None where this process reports nothing."""
    from mlrun.engine.run_dir import check_writable
    from mlrun.tuning.space import check_space

    if config.tune.objectives is not None:  # a search over compress settings: checked before the space
        from mlrun.tuning.compress_search import check_objectives

        check_objectives(config)
    check_space(options.path, list(options.overrides), config.tune)
    warn_unusual_directions(config.tune.objectives or {config.tune.metric: config.tune.direction})
    tune_dir = study_folder(config, options.study_name, options.storage)
    check_writable(tune_dir)
    if config.tune.objectives is not None:
        from mlrun.tuning.compress_search import run_compress_search

        (tune_dir / "compress").mkdir(parents=True, exist_ok=True)
        return run_compress_search(
            config,
            options,
            tune_dir / "compress",
            enqueue=enqueue_config,
            processes=training_processes().num_processes,
        )
    tune_dir.mkdir(parents=True, exist_ok=True)
    if config.tune.strategy == "pbt":
        return run_population(config, options, tune_dir)
    return run_study(config, options, tune_dir)


def study_folder(config: ExperimentConfig, study_name: str, storage: str | None = None) -> Path:
    """runs/<name>/tune/ for the run's own study (named after the run; `<name>-compress` for a compress
    search); runs/<name>/tune-<study>/ for another (`--study NAME`), so two studies never write each
    other's trial folders, trials.csv or best.yaml. A name changed to fit a folder name gets a hash of
    itself ("a b" and "a_b" stay apart); a study begun in tune/'s journal before studies had folders
    of their own goes on there."""
    run = Path(config.output_dir) / config.name
    own = f"{config.name}-compress" if config.tune.objectives is not None else config.name
    if study_name == own:
        return run / "tune"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", study_name)
    if safe != study_name:
        safe += "-" + hashlib.sha1(study_name.encode()).hexdigest()[:8]
    folder, earlier = run / f"tune-{safe}", run / "tune" / "journal.log"
    if storage is None and not folder.exists() and earlier.is_file() and study_name in journal_studies(earlier):
        return run / "tune"
    return folder


def journal_studies(path: Path) -> set[str]:
    """The names of the studies a journal file holds."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return {study.study_name for study in storage.get_all_studies()}


def run_population(config: ExperimentConfig, options: StudyOptions, tune_dir: Path) -> dict:
    from mlrun.tuning.pbt import run_pbt
    from mlrun.tuning.tracked import open_study_run

    study_run = open_study_run(config, tune_dir, f"{config.name} pbt")
    report = run_pbt(options.path, list(options.overrides), config, tune_dir)
    if study_run is not None:
        leader = {"number": report["best_member"], "params": report["best_params"]}
        final = {m["id"]: m["value"] for m in report["rounds"][-1]["members"]}
        study_run.finish(final, {"best": {**leader, "value": final[leader["number"]]}}, config.tune.metric)
    return report


def warn_unusual_directions(objectives: dict[str, str]) -> None:
    """A warning (not a refusal: a user may mean it) for each figure searched against its name's sense."""
    for figure, direction in objectives.items():
        expected = {"min": "minimize", "max": "maximize", None: None}[better(figure)]
        if expected is not None and direction != expected:
            print(
                f"mlrun: warning: the study will {direction} {figure}, which its name says is better "
                f"{'smaller' if expected == 'minimize' else 'larger'}; set {expected} if that was meant",
                file=sys.stderr,
                flush=True,
            )


def run_study(config: ExperimentConfig, options: StudyOptions, tune_dir: Path) -> dict | None:
    from mlrun.tuning.objective import objective
    from mlrun.tuning.study import (
        make_pruner,
        make_sampler,
        make_storage,
        optuna_module,
        warn_small_generation,
        warn_split_hyperband,
    )
    from mlrun.tuning.study_guard import check_continuation

    optuna = optuna_module()
    tune, path, overrides = config.tune, options.path, list(options.overrides)
    processes = training_processes()
    if processes.num_processes > 1 and options.workers > 1:
        raise UsageError(
            "--workers starts more studies on this host; under torchrun each trial already trains on "
            "several processes: use one or the other"
        )
    main = processes.is_main_process
    if main and not options.worker:
        for note in (
            warn_small_generation(tune.sampler, options.trials),
            warn_split_hyperband(tune.sampler, tune.pruner, options.trials),
        ):
            if note:
                print(f"mlrun: warning: {note}", file=sys.stderr, flush=True)
    study, store_text, study_run = None, None, None
    if main:  # under several processes only rank 0 talks to the storage
        store, store_text = make_storage(options.storage, tune_dir, options.workers)
        study = optuna.create_study(
            storage=store,
            sampler=make_sampler(tune.sampler, tune),
            pruner=make_pruner(tune.pruner, tune.value),
            study_name=options.study_name,
            direction=tune.direction,
            load_if_exists=True,
        )
        check_continuation(study, config)
    if main and not options.worker and not study.trials:
        enqueue_config(study, config)
    if main and not options.worker:  # before workers start: they read the trials' trackers it writes
        from mlrun.tuning.tracked import open_study_run

        study_run = open_study_run(config, tune_dir, options.study_name)
    if processes.num_processes > 1:
        from mlrun.tuning.distributed import run_distributed_trials

        run_distributed_trials(path, overrides, tune, tune_dir, options.trials, study)
        return finish(study, study_run, options, tune, tune_dir) if main else None
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    helpers = [] if options.worker else start_workers(options, store_text, options.workers - 1)
    if len(study.get_trials(states=ended)) < options.trials:
        if not options.worker:
            started = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]  # not the enqueued
            print(
                f"mlrun: study '{options.study_name}' ({store_text}): {len(started)} trials so far, "
                f"target {options.trials}",
                flush=True,
            )
        from mlrun.tuning.storage import requeue_interrupted, run_trials

        if not options.worker:
            requeue_interrupted(study)
        # study.optimize that survives a lost database connection
        run_trials(study, objective(path, overrides, tune, tune_dir), options.trials, options.timeout_s, ended)
    for helper in helpers:
        helper.wait()
    return None if options.worker else finish(study, study_run, options, tune, tune_dir)


def enqueue_config(study, config: ExperimentConfig) -> None:
    """A new study's first trial: the config's own values, when they lie inside the space (else say why not).

    Hand-set values are often good; run first, they give the sampler a strong point and Hyperband
    its maximum budget (it prunes nothing before a trial completes). A grid is searched in full anyway.
    """
    from mlrun.tuning.space import config_point

    tune = config.tune
    if not tune.enqueue_config or tune.sampler.name == "grid":
        return
    point, reason = config_point(config, tune.space)
    if point is None:
        print(f"mlrun: the config's own values are not the first trial: {reason}", file=sys.stderr, flush=True)
        return
    study.enqueue_trial(point, user_attrs={"from_config": True}, skip_if_exists=True)


def training_processes():
    """The process group trials train on (one process unless launched by torchrun / accelerate launch)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def start_workers(options: StudyOptions, storage: str, count: int) -> list[subprocess.Popen]:
    """`count` more processes of the same study on this host (`mlrun tune ... --worker`)."""
    from mlrun.child_process import start_mlrun

    arguments = ["tune", str(options.path), *options.overrides, "--trials", str(options.trials)]
    arguments += ["--storage", storage, "--study", options.study_name, "--worker"]
    if options.timeout_s:
        arguments += ["--timeout", str(options.timeout_s)]
    # Each worker numbered (MLRUN_TUNE_WORKER) for its log; samplers seed each trial by its number (tuning/study.py).
    threads = share_threads(count + 1)
    # Their trial lines go where this process's go: stdout, which --json has already pointed at stderr.
    return [start_mlrun(arguments, env={"MLRUN_TUNE_WORKER": str(index), **threads}) for index in range(1, count + 1)]


def share_threads(processes: int) -> dict[str, str]:
    """Give each of `processes` studies on this host its share of the cores (this one now, the workers
    through OMP_NUM_THREADS), unless the user set OMP_NUM_THREADS: with torch's default of a thread per
    core in each, they oversubscribe the machine and small models' ops wait on each other's threads."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    import torch

    share = max(1, (os.cpu_count() or 1) // processes)
    torch.set_num_threads(share)
    return {"OMP_NUM_THREADS": str(share)}


def finish(study, study_run, options: StudyOptions, tune, tune_dir: Path) -> dict:
    """Write the study's files, close its tracked run, and return the summary."""
    summary = summarize(study, options, tune, tune_dir)
    if study_run is not None:
        values = {trial.number: trial.value for trial in study.trials if trial.value is not None}
        study_run.finish(values, summary, tune.metric)
    return summary


def summarize(study, options: StudyOptions, tune, tune_dir: Path) -> dict:
    import optuna

    from mlrun.engine.run_dir import write_json
    from mlrun.tuning import report

    report.write_csv(study, tune_dir / "trials.csv")
    counts = {s.name.lower(): len(study.get_trials(states=(s,))) for s in optuna.trial.TrialState}
    summary = {"study": study.study_name, "trials": len(study.trials), "states": counts, "folder": str(tune_dir)}
    summary["compute"] = report.compute_spent(study)
    summary["first_failure"] = report.first_failure(study)
    if counts["complete"]:
        best = report.write_best_config(study, options.path, list(options.overrides), tune, tune_dir / "best.yaml")
        summary["best"] = {"number": study.best_trial.number, "value": study.best_value, "params": best}
        summary["best"]["evaluation"] = tune.value  # which of each trial's evaluations its value is: last or best
        summary["near_best"] = report.near_best(study, tune)
        summary["importances"] = report.write_importances(study, tune_dir)
        summary["plots"] = report.write_plots(study, tune_dir, bool(summary["importances"]))
    write_json(tune_dir / "summary.json", summary)
    return summary
