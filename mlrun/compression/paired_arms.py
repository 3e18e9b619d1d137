"""The baseline arm of `distill`: the same student trained alone, over paired seeds.

    compress:
      - {name: distill, student: {name: mlp, hidden_sizes: [384, 128]}, baseline: true, seeds: 5,
         finetune: {train.epochs: 30}}

For each seed s (the run's seed, then s + 1, ...) two runs differ only in the objective: `distilled`
(the stage's) and `alone` (the run's own). Both start from the same student, initialised under seed
s, and train for the same steps with the same schedule, batches and augmentation. The seed draws
the student's initial weights only: the runs keep the trained run's `seed`, because mlrun's data
split follows `seed`, and a teacher trained on the run's split must not have seen the student's
validation samples (another split would favour distillation unfairly). The first seed's distilled
run is the stage's own fine-tuning. Runs live in <stage>/baseline/seed-<s>/{distilled,alone} and,
like any run, resume when interrupted and are reused when finished.

The report holds both arms' final metric per seed, the mean paired gain of distilling (distilled -
alone, or alone - distilled for a metric where lower is better, such as perplexity) and its 95%
Student-t interval: differences of the same seed remove what the seed alone decides. `others` gives
the same for every other validation metric of the runs (val/loss aside: each arm's objective has its
own loss), so a language model's perplexity is compared beside its accuracy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlrun.config.errors import SourceMap
from mlrun.config.load import validate_raw
from mlrun.config.schema import ExperimentConfig
from mlrun.engine.run_dir import read_summary
from mlrun.errors import UsageError
from mlrun.registry import metrics

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (seeds - 1); stage settings cap seeds at 31.
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
MAX_SEEDS = len(T_975) + 1


def paired_difference(distilled: list[float], alone: list[float], sign: float = 1.0) -> dict[str, Any]:
    """Mean of sign * (distilled - alone) over paired seeds (sign -1 where lower is better), its standard
    deviation and 95% t-interval."""
    gains = [sign * (d - a) for d, a in zip(distilled, alone, strict=True)]
    mean = statistics.fmean(gains)
    if len(gains) < 2:
        return {"mean_gain": mean, "sd": None, "interval95": None}
    sd = statistics.stdev(gains)
    half = T_975[len(gains) - 2] * sd / math.sqrt(len(gains))
    return {"mean_gain": mean, "sd": sd, "interval95": [mean - half, mean + half]}


def baseline_arm(
    seeds: int, own_objective: dict[str, Any], start_for: Callable[[int, Path], Path]
) -> Callable[[ExperimentConfig, Path], dict[str, Any]]:
    """The stage's `compare`: trains the arms beside the fine-tuning and reports them.

    start_for(seed, folder) writes and returns the start weights of that seed (a fresh student).
    """

    def compare(tuned: ExperimentConfig, train_dir: Path) -> dict[str, Any]:
        first = tuned.seed
        metric, higher_is_better = _compared_metric(tuned, train_dir)
        finals: dict[str, list[dict[str, float]]] = {"distilled": [], "alone": []}
        for seed in range(first, first + seeds):
            folder = train_dir.parent / "baseline" / f"seed-{seed}"
            start = tuned.init_from.path if seed == first else str(start_for(seed, folder))
            distilled = train_dir if seed == first else _train_arm(tuned, folder, "distilled", start)
            alone = _train_arm(tuned, folder, "alone", start, own_objective)
            finals["distilled"].append(read_summary(distilled)["final"])
            finals["alone"].append(read_summary(alone)["final"])
        # Every validation figure both arms have, except val/loss (each arm's own objective's loss).
        shared = [k for k in finals["alone"][0] if k.startswith("val/") and k != "val/loss"]
        others = {
            k: _compared(finals, k, not _lower_is_better(k.removeprefix("val/")))
            for k in shared
            if k != metric and _in_every_run(finals, k)
        }
        seed_list = list(range(first, first + seeds))
        compared = _compared(finals, metric, higher_is_better)
        return {"baseline": {"metric": metric, "seeds": seed_list, **compared, "others": others}}

    return compare


def _compared(finals: dict[str, list[dict[str, float]]], metric: str, higher: bool) -> dict[str, Any]:
    """Both arms' `metric` per seed, which direction is better, and the paired gain."""
    arms = {arm: [float(final[metric]) for final in runs] for arm, runs in finals.items()}
    gain = paired_difference(**arms, sign=1.0 if higher else -1.0)
    return {"better": "higher" if higher else "lower", **arms, **gain}


def _in_every_run(finals: dict[str, list[dict[str, float]]], metric: str) -> bool:
    return all(metric in final for runs in finals.values() for final in runs)


def _train_arm(tuned: ExperimentConfig, folder: Path, name: str, start: str, objective: dict | None = None) -> Path:
    """One arm's run (skipped when it finished before an interruption); returns its folder."""
    from mlrun.engine.run import run_training

    data = tuned.model_dump(mode="json")
    data.update(name=name, output_dir=str(folder), init_from={**data["init_from"], "path": start})
    if objective is not None:
        data["objective"] = objective
    run_dir = folder / name
    summary = read_summary(run_dir)
    if not (summary and summary.get("status") in ("completed", "early_stopped")):
        run_training(validate_raw(data, SourceMap()), resume="auto")
    return run_dir


def _compared_metric(tuned: ExperimentConfig, train_dir: Path) -> tuple[str, bool]:
    """(metric, whether higher is better): the run's monitored metric, else its first metric where higher
    is better (accuracy before perplexity), else its first; val/loss differs between the arms' objectives."""
    if tuned.train.best and tuned.train.best.monitor != "val/loss":
        return tuned.train.best.monitor, tuned.train.best.mode == "max"
    final = (read_summary(train_dir) or {}).get("final") or {}
    names = [k for k in final if k.startswith("val/") and k != "val/loss"]
    lower = {k for k in names if _lower_is_better(k.removeprefix("val/"))}
    chosen = next((k for k in names if k not in lower), names[0] if names else "val/loss")
    return chosen, chosen not in lower and chosen != "val/loss"


def _lower_is_better(metric: str) -> bool:
    try:
        return bool(metrics.trait(metric, "lower_is_better", False))
    except (UsageError, ValueError, KeyError):  # a figure that is no registry metric (an exit's accuracy)
        return False
