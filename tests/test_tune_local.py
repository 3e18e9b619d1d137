"""Local search around the best trial (`tune.sampler.local_share`): where its trials land."""

from __future__ import annotations

import math

import pytest

from tests.conftest import run_cli
from tests.test_tune import tune_config


def drawn_lrs(share: float, best_at: dict[int, float], asks: int = 30) -> list[tuple[float, str]]:
    """A seeded random-sampler study, maximised, whose trial 0 is lr 1e-3 / choice "b" and trial 15
    lr 0.1 / choice "c"; trial n scores best_at[n] where given, 1 for trial 0, 0 otherwise. The (lr,
    choice) of every trial."""
    import optuna

    from mlrun.config.schema import SamplerConfig
    from mlrun.tuning.study import make_sampler

    local = {"local_share": share, "local_scale": 0.02} if share else {}
    sampler = make_sampler(SamplerConfig(name="random", seed=3, **local), None)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.enqueue_trial({"lr": 1e-3, "choice": "b"})
    drawn = []
    for number in range(asks):
        if number == 15:
            study.enqueue_trial({"lr": 0.1, "choice": "c"})
        trial = study.ask()
        drawn.append(
            (trial.suggest_float("lr", 1e-6, 1.0, log=True), trial.suggest_categorical("choice", ["a", "b", "c"]))
        )
        study.tell(trial, best_at.get(number, 0.0 if number else 1.0))
    return drawn


def near(lr: float, centre: float) -> bool:
    return abs(math.log10(lr) - math.log10(centre)) < 0.5  # 0.02 of 6 decades is 0.12 decade a step


def test_local_trials_stay_near_the_best_trial_and_follow_it_when_a_better_one_finishes():
    drawn = drawn_lrs(0.99, {15: 2.0})  # trial 15, far from trial 0, becomes the best
    before, after = drawn[1:15], drawn[16:]
    assert all(near(lr, 1e-3) for lr, _ in before) and sum(c == "b" for _, c in before) >= 12
    assert all(near(lr, 0.1) for lr, _ in after) and sum(c == "c" for _, c in after) >= 12
    assert len({lr for lr, _ in drawn}) == len(drawn)  # steps, not copies
    assert drawn_lrs(0.99, {15: 2.0}) == drawn  # seeded: a rerun draws the same trials


def test_without_local_share_the_sampler_spreads_over_the_space():
    lrs = [lr for lr, _ in drawn_lrs(0.0, {})[1:]]
    assert sum(near(lr, 1e-3) for lr in lrs) < len(lrs) / 2  # 1 decade of 6: about a sixth
    half = [lr for lr, _ in drawn_lrs(0.5, {})[1:]]
    assert len(lrs) / 3 < sum(near(lr, 1e-3) for lr in half) < len(half)  # about half, plus random's sixth


def test_a_step_stays_inside_the_range_on_its_step_and_changes_a_choice_at_the_scale():
    import numpy as np
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from mlrun.tuning.local_search import perturb

    rng = np.random.default_rng(0)
    stepped = [perturb(0.9, FloatDistribution(0.0, 1.0, step=0.1), 1.0, rng) for _ in range(200)]
    assert all(0.0 <= v <= 1.0 and math.isclose(v * 10, round(v * 10)) for v in stepped)
    assert len(set(stepped)) > 5  # a large scale reaches across the range
    ints = [perturb(10, IntDistribution(1, 10), 0.3, rng) for _ in range(200)]
    assert all(isinstance(v, int) and 1 <= v <= 10 for v in ints) and min(ints) < 8
    logs = [perturb(1e-3, FloatDistribution(1e-6, 1.0, log=True), 0.01, rng) for _ in range(200)]
    assert all(0.5e-3 < v < 2e-3 for v in logs)  # 0.01 of six decades in log space, not of the linear range
    choices = [perturb("b", CategoricalDistribution(["a", "b", "c"]), 0.25, rng) for _ in range(400)]
    assert 60 < sum(c != "b" for c in choices) < 140


@pytest.mark.parametrize(
    "sampler, key",
    [
        ({"name": "nsga2", "local_share": 0.5}, "local_share"),
        ({"name": "grid", "local_share": 0.5}, "local_share"),
        ({"name": "tpe", "local_scale": 0.3}, "local_scale"),  # without local_share it would do nothing
    ],
)
def test_local_search_settings_are_refused_where_they_would_do_nothing(tmp_path, sampler, key):
    path = tune_config(tmp_path, sampler=sampler)
    result = run_cli("tune", path, cwd=tmp_path)
    assert result.returncode == 2 and f"tune.sampler.{key}" in result.stderr
    assert not (tmp_path / "runs" / "study" / "tune" / "trial-0000").exists()


def test_a_parameter_whose_range_changed_since_the_best_trial_is_left_to_the_sampler():
    import optuna

    from mlrun.config.schema import SamplerConfig
    from mlrun.tuning.study import make_sampler

    sampler = make_sampler(SamplerConfig(name="random", seed=0, local_share=0.99, local_scale=0.02), None)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.enqueue_trial({"lr": 1e-3})
    trial = study.ask()
    study.tell(trial, trial.suggest_float("lr", 1e-6, 1.0, log=True))
    lrs = []
    for _ in range(10):  # a resumed study whose space now starts at 1e-2 (the best trial's 1e-3 lies outside)
        trial = study.ask()
        lrs.append(trial.suggest_float("lr", 1e-2, 1.0, log=True))
        study.tell(trial, 0.0)
    assert all(1e-2 <= lr <= 1.0 for lr in lrs)
    spread = math.log10(max(lrs)) - math.log10(min(lrs))
    assert spread > 0.5  # drawn over the new range, not steps of 0.04 decade from 1e-3 folded into it


def test_tune_marks_each_trials_origin_in_its_line_and_trials_csv(tmp_path):
    from tests.test_tune import trials_csv

    sampler = {"name": "tpe", "seed": 0, "startup_trials": 2, "local_share": 0.6}
    space = {
        "optimizer.lr": {"type": "float", "low": 1e-6, "high": 3e-2, "log": True},
        "model.hidden_sizes": {"type": "categorical", "choices": [[32], [64]]},
    }
    path = tune_config(tmp_path, trials=6, sampler=sampler, pruner={"name": "none"}, space=space)
    result = run_cli("tune", path, "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    origins = [t["origin"] for t in trials_csv(tmp_path)]
    assert origins[0] == "config"
    near_trials = [o for o in origins if o.startswith("near trial ")]
    assert near_trials and "sampler" in origins
    assert f"[{near_trials[0]}]" in result.stdout and "[config]" in result.stdout
