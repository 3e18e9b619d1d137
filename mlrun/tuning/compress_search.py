"""A search for the best compressed model: `mlrun tune` over `compress.<n>.<setting>` keys, scored on
several figures at once (accuracy, stored size, latency) by a multi-objective Optuna sampler.

    mlrun train configs/pareto_digits.yaml && mlrun tune configs/pareto_digits.yaml

Each trial runs the config's `compress:` chain, with the trial's values, from the trained run's final
weights (no training from scratch: trials cost a few fine-tuning epochs). The stages go to
runs/<name>/tune/compress/stages/, one folder per stage key (its settings and its input), so a trial
whose chain begins like an earlier one's reuses those stages, and a repeated chain (NSGA-II redraws
settings from small spaces) costs only a measurement; the trial's compress.json is in trial-<n>/.
Its scores are the figures `mlrun compress` measures of the chain's last stage:
validation metrics, the loadable file's bytes (compressed.safetensors where a stage bit-packs its
weights), MACs and CPU latency. What is left is the Pareto front (tuning/pareto.py); any member's
last stage folder exports with `mlrun export`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from mlrun.config.load import as_override, load_config
from mlrun.config.schema import ExperimentConfig
from mlrun.errors import UsageError, did_you_mean
from mlrun.tuning.space import grid, suggest

# Figures of a compress stage row (compression/measure.py) that a search may score, besides val/<metric>.
STAGE_FIGURES = (
    "file_bytes",
    "bytes",
    "huffman_bytes",
    "latency_ms_b1",
    "latency_ms_b64",
    "macs",
    "nonzero_parameters",
    "parameters",
)


def check_objectives(config: ExperimentConfig) -> None:
    """Every objective a figure a stage measures, every searched key a compress setting; exit 2 before any trial."""
    tune = config.tune
    metric_names = ["val/loss", *(f"val/{spec.name}" for spec in config.metrics)]
    known = [*metric_names, *STAGE_FIGURES]
    if not tune.objectives:
        raise UsageError("tune.objectives: name at least one figure to optimise, e.g. {val/accuracy: maximize}")
    for key in tune.objectives:
        if key not in known:
            raise UsageError(
                f"tune.objectives.{key}: not a figure a compress stage measures.{did_you_mean(key, known)} "
                f"Choose from: {', '.join(known)}"
            )
    if not config.compress:
        raise UsageError("tune.objectives: a compress search needs the compress: stages whose settings it varies")
    for key in tune.space:
        if not key.startswith("compress."):
            raise UsageError(
                f"tune.space.{key}: a search with tune.objectives varies compress stage settings only "
                f"(compress.<n>.<setting>, e.g. compress.0.sparsity); train-time keys need a separate tune"
            )
    if "pruner" in tune.model_fields_set and tune.pruner.name != "none":
        raise UsageError("tune.pruner: a compress search scores finished chains only; set pruner: {name: none}")
    if set_aside := sorted({"metric", "direction"} & tune.model_fields_set):
        raise UsageError(
            f"tune.{set_aside[0]}: a compress search scores tune.objectives (figure: direction); "
            f"remove tune.{' and tune.'.join(set_aside)}"
        )
    if tune.strategy != "optuna":
        raise UsageError("tune.strategy: a compress search (tune.objectives) runs with strategy optuna")


def warn_enumerable(tune, trials: int) -> str | None:
    """A space of few chains (every key categorical or stepped) searched by a sampler: the grid covers it.

    Measured on configs/pareto_wide_mlp_structured.yaml (128 chains): NSGA-II and TPE at 48-96 trials
    found the front's smallest member within one point in 1 search of 8; the grid, with stages shared
    across trials, computed 89 stage results for all 128 (scripts/bench/RESULTS.md)."""
    if tune.sampler.name == "grid" or any(s.type != "categorical" and not s.step for s in tune.space.values()):
        return None
    size = math.prod(len(values) for values in grid(tune.space).values())
    if size > 3 * trials:
        return None
    return (
        f"tune.space holds {size} chains and the search asks for {trials} trials: the grid "
        f"(tune.sampler: {{name: grid}}, tune.trials: {size}) tries every one, and stages shared by chains "
        f"that begin alike keep it cheap; {tune.sampler.name} may miss the front's edges"
    )


def trained_run(config: ExperimentConfig, path: Path, overrides: list[str]) -> Path:
    """The run the search compresses (`path` and `overrides`, the command's, say how to train it if absent)."""
    from mlrun.config.load import train_command

    source_dir = Path(config.output_dir) / config.name
    if not (source_dir / "model.safetensors").is_file():
        raise UsageError(
            f"a compress search starts from a trained run, and '{source_dir}' has no final weights "
            f"(model.safetensors); train it first: {train_command(path, overrides)}"
        )
    return source_dir


def score(row: dict, key: str) -> float:
    """One objective's value from a stage row: val/<metric> from its metrics, else the row's own figure."""
    return float(row["metrics"][key]) if key.startswith("val/") else float(row[key])


def objective(path: Path, overrides: list[str], config: ExperimentConfig, tune_dir: Path, source_dir: Path):
    """The function Optuna calls per trial: the compress chain with the trial's values, its figures."""
    from mlrun.compression.run import run_compress

    tune = config.tune

    def run(trial) -> list[float]:
        params = {key: suggest(trial, key, spec) for key, spec in tune.space.items()}
        # A sampled combination the config rejects fails the trial alone (run_trials records the error).
        trial_config = load_config(path, [*overrides, *(as_override(k, v) for k, v in params.items())])
        trial_dir, shared = tune_dir / f"trial-{trial.number:04d}", tune_dir / "stages"
        report = run_compress(trial_config.compress, source_dir, root=trial_dir, shared_stages=shared)
        trained, last = report["stages"][0], report["stages"][-1]
        trial.set_user_attr("dir", last["dir"])  # `mlrun export` takes this folder
        trial.set_user_attr("stages", [row["dir"] for row in report["stages"][1:]])
        trial.set_user_attr("figures", {k: score(last, k) for k in ("file_bytes", "latency_ms_b1", "latency_ms_b64")})
        trial.set_user_attr("metrics", last["metrics"])
        trial.set_user_attr("vs_trained", last["vs_trained"])
        # Whether the timings behind the speedup are trusted: the trained model's (once a search) and the stage's.
        trial.set_user_attr("latency_trusted", trained["latency_trusted"] and last["latency_trusted"])
        trial.set_user_attr(
            "trained", {k: trained[k] for k in ("metrics", "file_bytes", "latency_ms_b1", "latency_ms_b64")}
        )
        return [score(last, key) for key in tune.objectives]

    return run


def run_compress_search(config: ExperimentConfig, options, tune_dir: Path, *, enqueue, processes: int) -> dict:
    """The study over compress settings, to `options.trials`; returns the summary with its Pareto front.

    `enqueue(study, config)` queues the config's own values (runner.enqueue_config); `processes`: how many
    processes this command runs on (torchrun)."""
    from mlrun.compression.run import file_key, warn_of_undoing
    from mlrun.tuning.pareto import summarize_front
    from mlrun.tuning.storage import run_trials
    from mlrun.tuning.study import make_sampler, make_storage, optuna_module, warn_small_generation
    from mlrun.tuning.study_guard import check_continuation

    check_objectives(config)
    weights = trained_run(config, options.path, list(options.overrides)) / "model.safetensors"
    warn_of_undoing(config.compress)  # the chain as configured, once (its trials check theirs quietly)
    for note in (
        warn_small_generation(config.tune.sampler, options.trials),
        warn_enumerable(config.tune, options.trials),
    ):
        if note:
            print(f"mlrun: warning: {note}", file=sys.stderr, flush=True)
    if options.workers > 1 or processes > 1:
        raise UsageError("a compress search (tune.objectives) runs in one process: drop --workers and torchrun")
    optuna = optuna_module()
    tune = config.tune
    store, store_text = make_storage(options.storage, tune_dir, 1)
    study = optuna.create_study(
        storage=store,
        sampler=make_sampler(tune.sampler, tune),
        study_name=options.study_name,
        directions=list(tune.objectives.values()),
        load_if_exists=True,
    )
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in tune.objectives.values()]:
        raise UsageError(
            f"study '{options.study_name}' in {store_text} has other objectives; give another --study or --storage"
        )
    check_continuation(study, config, trained_weights=file_key(weights))
    if not study.trials:
        enqueue(study, config)
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    if len(study.get_trials(states=ended)) < options.trials:
        print(
            f"mlrun: compress search '{options.study_name}' ({store_text}): target {options.trials} trials", flush=True
        )
        trial_objective = objective(options.path, list(options.overrides), config, tune_dir, weights.parent)
        run_trials(study, trial_objective, options.trials, options.timeout_s, ended)
    return summarize_front(study, tune, tune_dir)
