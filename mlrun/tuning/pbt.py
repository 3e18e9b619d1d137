"""Population-based training (Jaderberg et al. 2017) on mlrun checkpoints; Optuna has none.

A population of runs trains in rounds of equal length. After each round the members are ranked by
`tune.metric`; each member of the worst quantile copies the newest checkpoint of a member of the
best quantile (exploit) and continues from it with that member's hyperparameters perturbed
(explore). Every member keeps one schedule over train.max_steps, so rounds only pause it.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import yaml

from mlrun.callbacks import Callback
from mlrun.config.load import load_config
from mlrun.config.schema import ExperimentConfig
from mlrun.engine.checkpoint import CHECKPOINTS, latest_checkpoint
from mlrun.errors import UsageError
from mlrun.tuning.objective import figure
from mlrun.tuning.space import as_override, perturb, sample
from mlrun.tuning.tracked import trial_tracking


class StopAt(Callback):
    """Ends a round: stops the run once it reaches `step` (it resumes from there next round)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, model, state: Any) -> None:
        if state.step >= self.step:
            state.should_stop, state.stop_reason = True, "round_end"


def run_pbt(path: Path, overrides: list[str], config: ExperimentConfig, tune_dir: Path) -> dict:
    from mlrun.engine.autobatch import resolve_batch_size
    from mlrun.engine.build import build_components
    from mlrun.tracking.figures import format_figure

    tune, pbt = config.tune, config.tune.pbt
    rng = random.Random(tune.sampler.seed)
    total = build_components(resolve_batch_size(config)).plan.total_steps
    if pbt.rounds > total:  # the rounds past the last step would find every member finished
        raise UsageError(
            f"tune.pbt.rounds: {pbt.rounds} rounds of a {total}-step run leave rounds without a step; "
            f"set at most {total} rounds, or train longer (train.max_steps)"
        )
    per_round = math.ceil(total / pbt.rounds)
    folder = tune_dir / "pbt"
    members = [
        {"id": i, "params": {k: sample(rng, spec) for k, spec in tune.space.items()}} for i in range(pbt.population)
    ]
    history = []
    for round_index in range(pbt.rounds):
        target = min(total, (round_index + 1) * per_round)
        for member in members:
            member["value"] = _train_round(path, overrides, member, folder, total, target, tune.metric, round_index)
        values = [m["value"] for m in members]
        best = max(values) if tune.direction == "maximize" else min(values)
        history.append(
            {
                "round": round_index + 1,
                "step": target,
                "mean": sum(values) / len(values),
                "best": best,
                "members": [{"id": m["id"], "value": m["value"], "params": m["params"]} for m in members],
            }
        )
        print(
            f"pbt round {round_index + 1}/{pbt.rounds} (step {target}): {tune.metric} mean "
            f"{format_figure(history[-1]['mean'])}, best {format_figure(best)}",
            flush=True,
        )
        if round_index + 1 < pbt.rounds:
            _exploit_and_explore(members, folder, tune, rng)
    leader = (max if tune.direction == "maximize" else min)(members, key=lambda m: m["value"])
    best_config = load_config(
        path,
        [
            *overrides,
            *(as_override(k, v) for k, v in leader["params"].items()),
            f"name={config.name}-best",
            "tune=null",
        ],
    )
    (tune_dir / "best.yaml").write_text(
        f"# PBT leader, member {leader['id']}: {tune.metric} = {leader['value']:.6g}\n"
        + yaml.safe_dump(best_config.model_dump(mode="json"), sort_keys=False)
    )
    report = {
        "rounds": history,
        "best_member": leader["id"],
        "best_params": leader["params"],
        "summary": f"{tune.metric} mean {format_figure(history[0]['mean'])} -> {format_figure(history[-1]['mean'])} "
        f"over {pbt.rounds} rounds; best {format_figure(leader['value'])} (member {leader['id']}); wrote "
        f"{tune_dir / 'best.yaml'} (train it: mlrun train {tune_dir / 'best.yaml'}) and {tune_dir / 'pbt.json'}",
    }
    (tune_dir / "pbt.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _train_round(path, overrides, member, folder: Path, total: int, target: int, metric: str, round_index: int):
    from mlrun.engine.run import run_training

    member_overrides = [
        *overrides,
        *(as_override(k, v) for k, v in member["params"].items()),
        f"name=member-{member['id']:02d}",
        f"output_dir={folder}",
        "tune=null",
        trial_tracking(folder.parent),  # the study's trackers, members as its children
        f"train.max_steps={total}",
        "train.early_stopping=null",
        "train.checkpoint_every=null",
    ]
    config = load_config(path, member_overrides)
    # From round 2 a member continues with perturbed (explored) values: a config change by design.
    state = run_training(
        config,
        resume="never" if round_index == 0 else "auto",
        overwrite=round_index == 0,
        callbacks=(StopAt(target),),
        allow_config_change=True,
    )
    return figure(state, metric)


def _exploit_and_explore(members: list[dict], folder: Path, tune, rng: random.Random) -> None:
    pbt = tune.pbt
    ranked = sorted(members, key=lambda m: m["value"], reverse=tune.direction == "maximize")
    count = max(1, int(round(pbt.quantile * len(members))))
    for loser in ranked[-count:]:
        winner = rng.choice(ranked[:count])
        source = latest_checkpoint(folder / f"member-{winner['id']:02d}")
        target_dir = folder / f"member-{loser['id']:02d}" / CHECKPOINTS
        shutil.rmtree(target_dir, ignore_errors=True)
        target_dir.mkdir(parents=True)
        shutil.copytree(source, target_dir / source.name)
        loser["params"] = {
            k: perturb(rng, winner["params"][k], tune.space[k], pbt.perturb, pbt.resample_probability)
            for k in tune.space
        }
        loser["copied_from"] = winner["id"]
