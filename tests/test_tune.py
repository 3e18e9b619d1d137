"""`mlrun tune` through the real CLI: pruning, resume, workers, best.yaml, PBT, samplers, pruners, bad spaces."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli, tiny_config, write_config


def tune_config(folder: Path, **tune) -> Path:
    config = {
        "base": str(REPO / "configs" / "quickstart.yaml"),
        "name": "study",
        "model": {"name": "mlp", "hidden_sizes": [64], "dropout": 0.0},
        "metrics": ["accuracy"],
        "train": {
            "epochs": 4,
            "eval_every": "5st",
            "log_every": "20st",
            "checkpoint_every": None,
            "early_stopping": None,
            "best": None,
        },
        "tracking": ["jsonl"],
        "tune": {
            "metric": "val/accuracy",
            "direction": "maximize",
            "trials": 8,
            "sampler": {"name": "tpe", "seed": 1},
            "pruner": {"name": "median", "startup_trials": 2},
            "space": {
                "optimizer.lr": {"type": "float", "low": 1e-6, "high": 3e-2, "log": True},
                "model.hidden_sizes": {"type": "categorical", "choices": [[32], [64, 32]]},
            },
            **tune,
        },
    }
    path = folder / "tune.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def trials_csv(folder: Path) -> list[dict]:
    with (folder / "runs" / "study" / "tune" / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_study_completes_and_prunes_then_resumes_with_more_trials(tmp_path):
    path = tune_config(tmp_path)
    result = run_cli("tune", path, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # the whole of stdout: trial lines went to stderr
    assert summary["states"]["complete"] >= 2 and summary["states"]["pruned"] >= 1
    tune_dir = tmp_path / "runs" / "study" / "tune"
    for name in ["best.yaml", "trials.csv", "history.png", "journal.log"]:
        assert (tune_dir / name).exists(), name
    pruned = [t for t in trials_csv(tmp_path) if t["state"] == "PRUNED"]
    assert (
        json.loads((tune_dir / f"trial-{int(pruned[0]['number']):04d}" / "summary.json").read_text())["status"]
        == "pruned"
    )
    # The pruner's resource is the evaluation count (1, 2, 3, ...), not the optimizer step (5, 10, ...).
    for trial in load_study(tune_dir).trials:
        assert sorted(trial.intermediate_values) == list(range(1, len(trial.intermediate_values) + 1))
    again = run_cli("tune", path, "--trials", "10", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(trials_csv(tmp_path)) == 10  # the same study, continued


def load_study(tune_dir: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tune_dir / "journal.log")))
    return optuna.load_study(study_name=None, storage=storage)


def test_sampler_options_reach_optuna_and_are_refused_where_they_do_not_apply(tmp_path):
    from mlrun.config.schema import SamplerConfig
    from mlrun.tuning.study import make_sampler

    tpe = make_sampler(SamplerConfig(name="tpe", seed=0, startup_trials=4, multivariate=True), None)
    assert tpe.inner._n_startup_trials == 4 and tpe.inner._multivariate and tpe.inner._group
    path = tune_config(tmp_path, sampler={"name": "random", "startup_trials": 3})
    result = run_cli("tune", path, cwd=tmp_path)
    assert result.returncode == 2 and "tune.sampler.startup_trials" in result.stderr
    assert not (tmp_path / "runs" / "study" / "tune" / "trial-0000").exists()


def test_a_nan_evaluation_never_becomes_a_trials_best():
    from mlrun.config.schema import TuneConfig
    from mlrun.tuning.objective import PruningReporter

    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1}}
    reporter = PruningReporter(None, TuneConfig(metric="val/loss", direction="minimize", value="best", space=space))
    for loss in (float("nan"), 0.7, 0.4, 0.9):
        reporter.on_evaluate({"val/loss": loss}, state=None)
    assert reporter.best == 0.4


def test_the_percentile_pruner_stops_the_bottom_share_and_settings_of_other_pruners_are_refused(tmp_path):
    import optuna

    from mlrun.config.schema import PrunerConfig
    from mlrun.tuning.study import make_pruner

    def pruned(config: PrunerConfig, value: float) -> bool:
        study = optuna.create_study(direction="maximize", pruner=make_pruner(config))
        for finished in (0.1, 0.2, 0.3, 0.4, 0.5):  # earlier trials' value at evaluation 1
            trial = study.ask()
            trial.report(finished, step=1)
            study.tell(trial, finished)
        trial = study.ask()
        trial.report(value, step=1)
        return trial.should_prune()

    # percentile: the top share that goes on. 0.25 is in the top 75% (above 0.2), not in the top 25% (0.4).
    assert not pruned(PrunerConfig(name="percentile", percentile=75), 0.25)
    assert pruned(PrunerConfig(name="percentile", percentile=75), 0.15)
    assert pruned(PrunerConfig(name="percentile", percentile=25), 0.25)
    assert not pruned(PrunerConfig(name="percentile", percentile=25), 0.45)
    # A warm-up of one evaluation: the first prune comes at evaluation 2 (trials report from 1).
    assert not pruned(PrunerConfig(name="percentile", percentile=25, warmup_evaluations=1), 0.25)
    refused = run_cli("tune", tune_config(tmp_path, pruner={"name": "median", "reduction_factor": 2}), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "reduction_factor is a setting of successive_halving and hyperband" in refused.stderr


def test_the_curve_pruner_stops_only_trials_no_curve_could_bring_to_the_best():
    import optuna
    from optuna.trial import TrialState

    from mlrun.config.schema import PrunerConfig
    from mlrun.tuning.study import make_pruner

    def add(study, curve: list[float], state=TrialState.COMPLETE):
        trial = study.ask()
        for step, figure in enumerate(curve, start=1):
            trial.report(figure, step=step)
        study.tell(trial, curve[-1] if state == TrialState.COMPLETE else None, state=state)

    # Two finished trials over 4 evaluations, flat at the end (no noise): one climbs 0.5 -> 0.9 (gain
    # from evaluation 1: 0.4), one 0.7 -> 0.8 (0.1). The best finished value is 0.9.
    def pruned(curve: list[float], value: str = "last", pruned_trials=(), **settings) -> bool:
        config = PrunerConfig(name="curve", startup_trials=2, **settings)
        study = optuna.create_study(direction="maximize", pruner=make_pruner(config, value))
        for finished in ([0.5, 0.7, 0.9, 0.9], [0.7, 0.75, 0.8, 0.8]):
            add(study, finished)
        for stopped in pruned_trials:
            add(study, stopped, TrialState.PRUNED)
        trial = study.ask()
        for step, figure in enumerate(curve, start=1):
            trial.report(figure, step=step)
        return trial.should_prune()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A slow starter at 0.55 after one evaluation could still climb 0.4 (to 0.95): it goes on, where the
    # median rule (below 0.6, the finished trials' median there) stops it.
    assert not pruned([0.55])
    assert pruned([0.45])  # 0.45 + 0.4 < 0.9: no curve rescues it
    assert pruned([0.55], gain_quantile=0.5)  # credited the median gain (0.25): 0.8 < 0.9
    assert not pruned([0.45], warmup_evaluations=1)
    assert not pruned([0.5, 0.7, 0.6, 0.5])  # the last evaluation: nothing left to save, the value is kept
    # Scored at its best evaluation, a trial already past the best is never stopped by a dip.
    assert pruned([0.95, 0.5]) and not pruned([0.95, 0.5], value="best")
    assert pruned([0.95, float("nan")]) and not pruned([0.95, float("nan")], value="best")
    assert pruned([0.85, 0.5], value="best")  # its best so far, 0.85, is short of 0.9 too
    # A pruned slow starter that climbed 0.3 -> 0.8 shows a gain of 0.5 from evaluation 1.
    assert not pruned([0.45], pruned_trials=[[0.3, 0.8]])
    # Noisy curves (late evaluations moving by 0.1 either way) credit 1.645 sigma: 0.45 + 0.4 + 0.16 >= 0.9.
    assert not pruned([0.45], pruned_trials=[[0.6, 0.62, 0.7, 0.6, 0.7, 0.6]])
    # Minimised: the finished losses fall 2.0 -> 1.0 and 1.5 -> 1.4.
    study = optuna.create_study(direction="minimize", pruner=make_pruner(PrunerConfig(name="curve")))
    for finished in ([2.0, 1.0], [1.5, 1.4]):
        add(study, finished)
    trial = study.ask()
    trial.report(2.05, step=1)  # could fall 1.0, to 1.05 > 1.0: stopped; at 1.95 it goes on
    assert trial.should_prune()
    trial = study.ask()
    trial.report(1.95, step=1)
    assert not trial.should_prune()


def test_best_yaml_trains(tmp_path):
    path = tune_config(tmp_path, trials=3)
    assert run_cli("tune", path, cwd=tmp_path).returncode == 0
    best = tmp_path / "runs" / "study" / "tune" / "best.yaml"
    assert "tune" not in yaml.safe_load(best.read_text()) or yaml.safe_load(best.read_text())["tune"] is None
    result = run_cli("train", best, "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "study-best" / "model.safetensors").exists()


@pytest.mark.e2e  # two worker processes
def test_two_workers_share_one_journal(tmp_path):
    path = tune_config(tmp_path, trials=6, pruner={"name": "none"})
    result = run_cli("tune", path, "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = trials_csv(tmp_path)
    assert len(trials) >= 6 and all(t["state"] == "COMPLETE" for t in trials)
    # Every trial's line, the worker's too, is on stdout with the rest of the report.
    assert sum(line.startswith("trial ") for line in result.stdout.splitlines()) == len(trials), result.stdout
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = str(tmp_path / "runs" / "study" / "tune" / "journal.log")
    study = optuna.load_study(study_name="study", storage=optuna.storages.JournalStorage(JournalFileBackend(journal)))
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2
    # One configured seed, yet each worker samples its own values (not the same trial twice).
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == len(study.trials)


def asked_values(journal: Path, studies: int, asks: int, name: str, seed: int = 1) -> list[list[float]]:
    """`studies` copies of one seeded study on one journal (as separate `mlrun tune` processes hold
    them), asking in turn; the values each copy drew."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from mlrun.config.schema import SamplerConfig
    from mlrun.tuning.study import make_sampler

    def copy():
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        sampler = make_sampler(SamplerConfig(name=name, seed=seed), None)
        return optuna.create_study(storage=storage, sampler=sampler, study_name="s", load_if_exists=True)

    copies, drawn = [copy() for _ in range(studies)], [[] for _ in range(studies)]
    for _ in range(asks):
        for index, study in enumerate(copies):
            trial = study.ask()
            drawn[index].append(trial.suggest_float("lr", 1e-6, 1e-1, log=True))
            study.tell(trial, drawn[index][-1])
    return drawn


def test_two_tune_processes_on_one_journal_draw_different_trials_and_a_study_reruns_the_same(tmp_path):
    for sampler in ("random", "tpe"):
        first, second = asked_values(tmp_path / f"{sampler}-shared.log", 2, 3, sampler)
        assert not set(first) & set(second), sampler  # one configured seed, yet no trial drawn twice
        alone = asked_values(tmp_path / f"{sampler}-a.log", 1, 4, sampler)[0]
        assert asked_values(tmp_path / f"{sampler}-b.log", 1, 4, sampler)[0] == alone  # reproducible


def test_studies_with_neighbouring_seeds_draw_different_trials(tmp_path):
    # Per-trial seeds of seed + trial number gave seed 1's study seed 0's trials shifted by one: repeats
    # of a search (seeds 0, 1, 2 ...) shared all but one trial.
    zero = asked_values(tmp_path / "zero.log", 1, 6, "random", seed=0)[0]
    one = asked_values(tmp_path / "one.log", 1, 6, "random", seed=1)[0]
    assert not set(zero) & set(one)


def test_invalid_space_key_fails_before_any_trial(tmp_path):
    path = tune_config(tmp_path, space={"optimizer.lrr": {"type": "float", "low": 0.1, "high": 0.2}})
    result = run_cli("tune", path, cwd=tmp_path)
    assert result.returncode == 2 and "tune.space.optimizer.lrr" in result.stderr
    assert "Did you mean 'lr'?" in result.stderr
    assert not (tmp_path / "runs" / "study" / "tune" / "trial-0000").exists()


def test_sqlite_is_refused_for_parallel_workers(tmp_path):
    path = tune_config(tmp_path)
    result = run_cli("tune", path, "--workers", "2", "--storage", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path)
    assert result.returncode == 2 and "SQLite" in result.stderr


def pbt_config(folder: Path, **pbt) -> Path:
    """tune_config's search as population-based training: without the settings only Optuna reads."""
    path = tune_config(
        folder,
        strategy="pbt",
        pbt=pbt,
        sampler={"seed": 0},
        space={"optimizer.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True}},
    )
    config = yaml.safe_load(path.read_text())
    del config["tune"]["trials"], config["tune"]["pruner"]
    path.write_text(yaml.safe_dump(config))
    return path


def test_pbt_improves_the_population_over_rounds(tmp_path):
    path = pbt_config(tmp_path, population=4, rounds=3)
    result = run_cli("tune", path, "train.epochs=null", "train.max_steps=90", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    means = [r["mean"] for r in report["rounds"]]
    assert means[-1] > means[0]
    assert (tmp_path / "runs" / "study" / "tune" / "best.yaml").exists()
    assert [len(r["members"]) for r in report["rounds"]] == [4, 4, 4]
    # more rounds than steps failed after 90 one-step rounds, exit 1 (a user trial)
    result = run_cli("tune", path, "train.epochs=null", "train.max_steps=90", "tune.pbt.rounds=100", cwd=tmp_path)
    assert result.returncode == 2 and "set at most 90 rounds" in result.stderr, result.stderr


def test_settings_the_strategy_does_not_read_are_refused(tmp_path):
    """PBT ran with a configured pruner, sampler or trial count silently unused, and Optuna with pbt settings."""
    path = pbt_config(tmp_path, population=2, rounds=1)
    assert run_cli("validate", path, cwd=tmp_path).returncode == 0
    for override, named in (
        ("tune.pruner={name: hyperband}", "pruner"),
        ("tune.trials=50", "trials"),
        ("tune.sampler.name=random", "sampler.name"),
        ("tune.strategy=optuna", "pbt: settings of strategy: pbt"),
    ):
        refused = run_cli("validate", path, override, cwd=tmp_path)
        assert refused.returncode == 2 and named in refused.stderr and "Traceback" not in refused.stderr, override
    for option in (["--trials", "3"], ["--workers", "2"], ["--study", "other"]):
        refused = run_cli("tune", path, *option, cwd=tmp_path)
        assert refused.returncode == 2 and option[0] in refused.stderr, refused.stderr


def test_tune_refuses_no_trials_and_a_timeout_of_no_time(tmp_path):
    """--trials 0 ran the config's trials; --timeout -1 ran nothing and exited 0 (a user trial)."""
    path = tune_config(tmp_path, trials=2)
    for option in (["--trials", "0"], ["--timeout", "-1"], ["--timeout", "0"]):
        result = run_cli("tune", path, *option, cwd=tmp_path)
        assert result.returncode == 2 and option[0] in result.stderr, result.stderr


def test_pbt_exploit_copies_the_winners_checkpoint_and_explore_perturbs_its_values(tmp_path):
    import random

    from mlrun.config.schema import TuneConfig
    from mlrun.tuning.pbt import _exploit_and_explore

    tune = TuneConfig(
        metric="val/accuracy",
        direction="maximize",
        strategy="pbt",
        space={"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}},
        pbt={"population": 2, "quantile": 0.5, "resample_probability": 0.0, "perturb": (0.8, 1.2)},
    )
    for member, marker in ((0, "winner"), (1, "loser")):
        checkpoint = tmp_path / f"member-{member:02d}" / "checkpoints" / "step-00000010"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_text(marker)
    members = [
        {"id": 0, "params": {"optimizer.lr": 0.01}, "value": 0.9},
        {"id": 1, "params": {"optimizer.lr": 0.5}, "value": 0.2},
    ]
    _exploit_and_explore(members, tmp_path, tune, random.Random(0))
    copied = tmp_path / "member-01" / "checkpoints" / "step-00000010" / "model.safetensors"
    assert copied.read_text() == "winner"
    assert members[1]["copied_from"] == 0
    assert members[1]["params"]["optimizer.lr"] in (pytest.approx(0.008), pytest.approx(0.012))
    assert members[0]["params"]["optimizer.lr"] == 0.01 and "copied_from" not in members[0]
    shutil.rmtree(tmp_path / "member-00")


@pytest.mark.parametrize(
    "sampler, pruner",
    [
        ("tpe", "median"),
        ("random", "successive_halving"),
        ("grid", "hyperband"),
        ("gp", "wilcoxon"),
        ("nsga2", "none"),
        ("cmaes", "median"),
        ("tpe", "curve"),
    ],
)
def test_every_sampler_and_pruner_finishes_a_tiny_study(tmp_path, sampler, pruner):
    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    config = tiny_config(name="study", tracking=["jsonl"])
    config["train"] = {"epochs": 2, "eval_every": "8st", "checkpoint_every": None}
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": sampler != "grid"}}
    if sampler == "grid":
        space["optimizer.lr"].update(step=0.05, high=0.101)
    settings = {"name": sampler, "seed": 0, **({"population_size": 2} if sampler == "nsga2" else {})}
    config["tune"] = {
        "metric": "val/accuracy",
        "direction": "maximize",
        "trials": 3,
        "sampler": settings,
        "pruner": {"name": pruner},
        "space": space,
    }
    result = run_cli("tune", write_config(tmp_path, config), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["trials"] == 3 and report["states"]["fail"] == 0, report
    assert "ExperimentalWarning" not in result.stderr  # Optuna's, with its file paths, at every study (a user trial)
    assert report["states"]["complete"] + report["states"]["pruned"] == 3 and report["states"]["complete"] >= 1
    if sampler == "grid":  # three trials on a three-point grid visit each point once
        values = [t.params["optimizer.lr"] for t in load_study(tmp_path / "runs" / "study" / "tune").trials]
        assert sorted(values) == pytest.approx([0.001, 0.051, 0.101]), values


def study_config(tmp_path, trials: int, **tune) -> dict:
    config = tiny_config(name="study", tracking=["jsonl"])
    config["train"] = {"epochs": 1, "eval_every": "1ep", "checkpoint_every": None}
    config["tune"] = {
        "metric": "val/accuracy",
        "direction": "maximize",
        "trials": trials,
        "pruner": {"name": "none"},
        "space": {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
        **tune,
    }
    return write_config(tmp_path, config)


def test_a_grid_range_holds_the_steps_inside_it():
    from mlrun.config.schema import ParamSpec
    from mlrun.tuning.space import grid

    space = {
        "lr": ParamSpec(type="float", low=0.001, high=0.101, step=0.05),
        "n": ParamSpec(type="int", low=1, high=7, step=3),
    }
    assert grid(space) == {"lr": pytest.approx([0.001, 0.051, 0.101]), "n": [1, 4, 7]}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"type": "float", "low": 0.001, "high": 0.1, "step": -0.01}, "step must be above 0"),  # was exit 1
        ({"type": "int", "low": 16, "high": 64, "step": 0}, "step must be above 0"),  # sampled as step 1
        ({"type": "int", "low": 16, "high": 64, "step": 100}, "at most high - low (48)"),  # every trial got 16
        ({"type": "float", "low": 0.001, "high": 0.1, "step": 0.05}, "not a whole number of steps"),  # high lowered
        ({"type": "int", "low": 16.5, "high": 64}, "whole numbers"),
        ({"type": "float", "low": 0.1, "choices": [0.1, 0.2]}, "choices are for type: categorical"),
        ({"type": "float", "low": 0.1}, "needs high"),
        ({"type": "categorical", "choices": [1, 2], "low": 1}, "a categorical key has choices"),
    ],
)
def test_a_range_optuna_would_change_or_refuse_is_a_config_error(spec, says):
    """A user trial: these were accepted and changed by Optuna in silence, or crashed (exit 1)."""
    from pydantic import ValidationError

    from mlrun.config.schema import ParamSpec

    with pytest.raises(ValidationError, match=re.escape(says)):
        ParamSpec(**spec)


def test_grid_range_with_step_and_log_is_a_config_error(tmp_path):
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True, "step": 1e-3}}
    result = run_cli("tune", study_config(tmp_path, 2, sampler={"name": "grid"}, space=space), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "step" in result.stderr and "log" in result.stderr and "choices" in result.stderr
    assert "unexpected error" not in result.stderr


def test_nsga2_population_reaches_optuna_and_a_too_small_study_is_warned(tmp_path):
    from mlrun.config.schema import SamplerConfig
    from mlrun.tuning.study import make_sampler

    assert make_sampler(SamplerConfig(name="nsga2", population_size=4), None)._population_size == 4
    result = run_cli("tune", study_config(tmp_path, 2, sampler={"name": "nsga2", "seed": 0}), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "population_size" in result.stderr and "random" in result.stderr
    refused = run_cli("tune", study_config(tmp_path, 2, sampler={"name": "tpe", "population_size": 4}), cwd=tmp_path)
    assert refused.returncode == 2 and "only nsga2" in refused.stderr


def test_a_short_hyperband_study_under_a_model_based_sampler_is_warned(tmp_path):
    from mlrun.config.schema import PrunerConfig, SamplerConfig
    from mlrun.tuning.study import warn_split_hyperband

    hyperband = PrunerConfig(name="hyperband")
    assert warn_split_hyperband(SamplerConfig(name="random"), hyperband, 30) is None  # no model to starve
    assert warn_split_hyperband(SamplerConfig(name="tpe"), hyperband, 500) is None
    stderr = {}
    for pruner in ("hyperband", "median"):
        folder = tmp_path / pruner
        folder.mkdir()
        config = study_config(folder, 2, sampler={"name": "tpe", "seed": 0}, pruner={"name": pruner})
        result = run_cli("tune", config, cwd=folder)
        assert result.returncode == 0, result.stderr
        stderr[pruner] = result.stderr
    assert "hyperband splits 2 trials into brackets" in stderr["hyperband"] and "{name: median}" in stderr["hyperband"]
    assert "brackets" not in stderr["median"]


def test_config_values_are_the_first_trial_and_compute_counts_pruned_trials_epochs(tmp_path):
    path = tune_config(tmp_path, trials=5, pruner={"name": "median", "startup_trials": 1})
    # quickstart's lr (3e-3) and this width lie inside the space: they are trial 0.
    result = run_cli("tune", path, "model.hidden_sizes=[32]", "train.epochs=2", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    tune_dir = tmp_path / "runs" / "study" / "tune"
    study = load_study(tune_dir)
    assert study.trials[0].params == {"optimizer.lr": 0.003, "model.hidden_sizes": "[32]"}
    first = yaml.safe_load((tune_dir / "trial-0000" / "config.yaml").read_text())
    assert first["optimizer"]["lr"] == 0.003 and first["model"]["hidden_sizes"] == [32]
    # Compute: every trial's epochs as its own summary.json records them, pruned trials included.
    epochs = {t.number: read_summary(tune_dir, t.number)["epochs"] for t in study.trials}
    pruned = [t.number for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and all(0 < epochs[n] < 2 for n in pruned)  # stopped early, yet counted
    assert summary["compute"]["epochs"] == pytest.approx(sum(epochs.values()), abs=0.01)
    assert summary["compute"]["pruned_epochs"] == pytest.approx(sum(epochs[n] for n in pruned), abs=0.01)
    assert summary["compute"]["steps"] == sum(read_summary(tune_dir, t.number)["steps"] for t in study.trials)
    values = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    near = sum(1 for v in values if max(values) - v <= 0.005)
    assert summary["near_best"] == {
        **summary["near_best"],
        "metric": "val/accuracy",
        "tolerance": 0.005,
        "trials": near,
    }
    assert json.loads((tune_dir / "summary.json").read_text())["compute"] == summary["compute"]
    again = run_cli("tune", path, "model.hidden_sizes=[32]", "train.epochs=2", "--trials", "6", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    spent = sum(read_summary(tune_dir, t.number)["epochs"] for t in load_study(tune_dir).trials)
    assert f"compute spent: {round(spent, 2):g} epoch{'' if round(spent, 2) == 1 else 's'}" in again.stdout
    near = near_after(tune_dir)
    assert f"{near} completed trial{'s' if near != 1 else ''} within 0.005 of the best val/accuracy" in again.stdout


def near_after(tune_dir: Path) -> int:
    values = [t.value for t in load_study(tune_dir).trials if t.state.name == "COMPLETE"]
    return sum(1 for v in values if max(values) - v <= 0.005)


def read_summary(tune_dir: Path, number: int) -> dict:
    return json.loads((tune_dir / f"trial-{number:04d}" / "summary.json").read_text())


def test_config_values_outside_the_space_are_not_enqueued_and_the_user_is_told(tmp_path):
    from mlrun.config.load import load_config
    from mlrun.tuning.space import config_point

    path = tune_config(tmp_path)
    config = load_config(path, ["model.hidden_sizes=[32]"])
    assert config_point(config, config.tune.space) == ({"optimizer.lr": 0.003, "model.hidden_sizes": "[32]"}, "")
    outside = load_config(path, ["optimizer.lr=0.1"])
    assert config_point(outside, config.tune.space) == (None, "optimizer.lr = 0.1 lies outside tune.space.optimizer.lr")
    stepped = load_config(path, ["tune.space={data.batch_size: {type: int, low: 16, high: 112, step: 32}}"])
    assert config_point(stepped, stepped.tune.space)[0] is None  # quickstart's 64 is not on 16, 48, 80, 112
    result = run_cli("tune", path, "--trials", "1", "train.epochs=1", cwd=tmp_path)  # width [64]: not a choice
    assert result.returncode == 0, result.stderr
    assert "not the first trial: model.hidden_sizes = [64] lies outside tune.space.model.hidden_sizes" in result.stderr


def test_workers_on_one_host_share_its_cores_unless_the_user_set_the_threads(monkeypatch):
    import os

    import torch

    from mlrun.tuning.runner import share_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda: 8)
        assert share_threads(3) == {"OMP_NUM_THREADS": "2"} and torch.get_num_threads() == 2  # this study too
        assert share_threads(16) == {"OMP_NUM_THREADS": "1"}
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        torch.set_num_threads(3)
        assert share_threads(2) == {} and torch.get_num_threads() == 3  # the user's setting stands
    finally:
        torch.set_num_threads(before)


def test_value_best_scores_each_trial_at_its_best_evaluation_and_early_stopping_ends_it(tmp_path):
    early = {"monitor": "val/accuracy", "mode": "max", "patience": 2}
    path = tune_config(
        tmp_path,
        trials=3,
        value="best",
        sampler={"name": "random", "seed": 0},
        pruner={"name": "none"},
        space={"optimizer.lr": {"type": "float", "low": 3e-2, "high": 3e-1, "log": True}},
    )
    result = run_cli("tune", path, "train.epochs=6", f"train.early_stopping={json.dumps(early)}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(its best evaluation)" in result.stdout
    tune_dir = tmp_path / "runs" / "study" / "tune"
    below_best = 0
    for trial in load_study(tune_dir).trials:
        lines = (tune_dir / f"trial-{trial.number:04d}" / "metrics.jsonl").read_text().splitlines()
        curve = [row["val/accuracy"] for row in map(json.loads, lines) if "val/accuracy" in row]
        assert trial.value == max(curve)
        below_best += curve[-1] < max(curve)
        assert read_summary(tune_dir, trial.number)["epochs"] < 6  # early stopping ended it
    assert below_best  # some trial ended below its best: the last value would have scored it lower
    assert json.loads((tune_dir / "summary.json").read_text())["best"]["evaluation"] == "best"
    mixed = run_cli("tune", path, "tune.value=last", "--trials", "4", cwd=tmp_path)  # the same study, scored otherwise
    assert mixed.returncode == 2 and "would mix two scorings" in mixed.stderr, mixed.stderr
    # another figure or direction was accepted silently: the best trial became the worst model (a user trial)
    for change, says in (
        ("tune.metric=val/loss", "scored its trials by val/accuracy"),
        ("tune.direction=minimize", "was made to maximize"),
    ):
        mixed = run_cli("tune", path, change, "--trials", "4", cwd=tmp_path)
        assert mixed.returncode == 2 and says in mixed.stderr, mixed.stderr
    refused = run_cli("tune", tune_config(tmp_path, value="best", strategy="pbt"), cwd=tmp_path)
    assert refused.returncode == 2 and "value: best" in refused.stderr and "Traceback" not in refused.stderr


def test_a_rerun_that_changes_what_a_trial_is_is_refused_before_any_trial(tmp_path):
    path = tune_config(tmp_path, trials=2, pruner={"name": "none"}, sampler={"name": "random", "seed": 0})
    assert (first := run_cli("tune", path, "train.epochs=1", cwd=tmp_path)).returncode == 0, first.stderr
    tune_dir = tmp_path / "runs" / "study" / "tune"
    longer = run_cli("tune", path, "train.epochs=2", "--trials", "3", cwd=tmp_path)  # later trials unlike earlier
    assert longer.returncode == 2 and "train.epochs: 1 -> 2" in longer.stderr, longer.stderr
    lr = "optimizer.lr: {type: float, low: 1.0e-6, high: 3.0e-2, log: true}"
    choices = f"tune.space={{{lr}, model.hidden_sizes: {{type: categorical, choices: [[16], [64, 32]]}}}}"
    other_choices = run_cli("tune", path, "train.epochs=1", choices, "--trials", "3", cwd=tmp_path)
    assert other_choices.returncode == 2, other_choices.stderr
    assert "tune.space.model.hidden_sizes: study 'study' searched it as choices" in other_choices.stderr
    assert "Traceback" not in longer.stderr + other_choices.stderr
    assert len(load_study(tune_dir).trials) == 2  # nothing ran, no failed trial recorded
    # What chooses the next trials may change: a float range, the sampler, the pruner, the count.
    wider = choices.replace("[[16], [64, 32]]", "[[32], [64, 32]]").replace("high: 3.0e-2", "high: 1.0e-1")
    more = run_cli("tune", path, "train.epochs=1", wider, "tune.pruner={name: median}", "--trials", "3", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert len(load_study(tune_dir).trials) == 3


def test_a_study_whose_every_trial_fails_exits_1_naming_the_first_error(tmp_path):
    """Each failure is one trial line with its reason (no traceback) and an error cell in trials.csv; a study
    with no completed trial has no result, so the command fails instead of ending quietly."""
    diverging = {"optimizer.lr": {"type": "float", "low": 1e6, "high": 1e8, "log": True}}
    path = tune_config(tmp_path, trials=2, space=diverging, enqueue_config=False)
    overrides = ["train.max_grad_norm=null", "train.epochs=1"]
    result = run_cli("tune", path, *overrides, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "failed with parameters" not in result.stderr
    failures = [line for line in result.stdout.splitlines() if line.startswith("trial") and "FAIL" in line]
    assert len(failures) == 2 and all("error: the loss became NaN" in line for line in failures), result.stdout
    assert "the same command" not in result.stdout  # a trial is not resumed by hand
    assert "no trial of the study completed (2 failed); the first, trial 0: the loss became NaN" in result.stderr
    assert all(row["error"].startswith("the loss became NaN") for row in trials_csv(tmp_path))
    shutil.rmtree(tmp_path / "runs")
    as_json = run_cli("tune", path, *overrides, "--json", cwd=tmp_path)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["exit_code"] == 1  # one document: the error


def test_another_study_of_the_same_run_has_a_folder_of_its_own(tmp_path):
    """`--study NAME` (what a refused rerun advises) beside the run's own study: its trials, trials.csv and
    best.yaml go to runs/<name>/tune-<study>/, and the first study's trial folders stay as they ran."""
    path = tune_config(tmp_path, trials=2)
    first = run_cli("tune", path, "train.epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    own = tmp_path / "runs/study/tune"
    config_before = (own / "trial-0000/config.yaml").read_text()
    other = run_cli("tune", path, "train.epochs=2", "--study", "longer", "--json", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["folder"] == str(Path("runs/study/tune-longer"))
    longer = yaml.safe_load((tmp_path / "runs/study/tune-longer/trial-0000/config.yaml").read_text())
    assert longer["train"]["epochs"] == 2
    assert (own / "trial-0000/config.yaml").read_text() == config_before
    assert [row["number"] for row in trials_csv(tmp_path)] == ["0", "1"]  # the run's own study's table
    # A name that is no folder name keeps apart from its look-alike: "a b" and "a_b" get two folders.
    from mlrun.config.load import load_config
    from mlrun.tuning.runner import study_folder

    config = load_config(path)
    assert study_folder(config, "a b") != study_folder(config, "a_b") == Path("runs/study/tune-a_b")
    # A study begun in tune/'s journal before studies had folders of their own goes on there.
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(JournalFileBackend(str(own / "journal.log")))
    optuna.create_study(study_name="earlier", storage=journal, direction="maximize")
    earlier = run_cli("tune", path, "train.epochs=1", "--study", "earlier", "--trials", "1", "--json", cwd=tmp_path)
    assert earlier.returncode == 0 and json.loads(earlier.stdout)["folder"] == str(Path("runs/study/tune"))


def test_a_trial_is_not_pruned_at_its_last_evaluation(tmp_path):
    """One evaluation a trial, at its last step: a pruner that finds it below the median there would stop a
    trial that has already trained in full (it was recorded PRUNED, its epochs counted as pruned)."""
    path = tune_config(
        tmp_path,
        trials=4,
        sampler={"name": "random", "seed": 0},
        pruner={"name": "median", "startup_trials": 1},
        space={"optimizer.lr": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True}},  # worse than the config
    )
    result = run_cli("tune", path, "train.epochs=1", "train.eval_every=1ep", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["states"]["complete"] == 4 and summary["compute"]["pruned_epochs"] == 0, summary["states"]


def test_a_metric_no_evaluation_logs_stops_the_study_at_its_first_trial(tmp_path):
    """A mistyped tune.metric trained every trial in full, failed each, then exited 1 (a user trial)."""
    path = tune_config(tmp_path, trials=5, metric="val/acc", pruner={"name": "none"})
    result = run_cli("tune", path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "tune.metric: 'val/acc' is not among" in result.stderr and "Did you mean 'val/accuracy'?" in result.stderr
    assert not (tmp_path / "runs" / "study" / "tune" / "trial-0001").exists()  # trial 0 only, stopped early


def test_a_sampler_seed_optuna_cannot_take_is_a_config_error():
    """tune.sampler.seed=-5 crashed with Optuna's ValueError (exit 1: 'unexpected error')."""
    from pydantic import ValidationError

    from mlrun.config.schema import SamplerConfig

    for seed in (-5, 2**32):
        with pytest.raises(ValidationError):
            SamplerConfig(seed=seed)
    assert SamplerConfig(seed=2**32 - 1).seed == 2**32 - 1


@pytest.mark.e2e  # a process of its own, signalled
def test_a_trial_stopped_by_a_signal_is_trained_again_when_the_study_is_rerun(tmp_path):
    """The interrupt said 'run the same command again to resume', and the rerun never trained that trial's
    values again: it stayed failed and counted (a user trial)."""
    armed = tmp_path / "armed"
    armed.write_text("")
    stop = {"name": "tests.fixtures:kill_at_step", "step": 3, "armed_file": str(armed), "signal_name": "SIGINT"}
    path = tune_config(tmp_path, trials=3, pruner={"name": "none"}, sampler={"name": "random", "seed": 0})
    stopped = run_cli("tune", path, f"techniques=[{json.dumps(stop)}]", cwd=tmp_path, subprocess=True)
    assert stopped.returncode == 130, stopped.stderr
    assert "stopped by signal in trial 0" in stopped.stderr and "trains that trial's values again" in stopped.stderr
    rerun = run_cli("tune", path, f"techniques=[{json.dumps(stop)}]", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    trials = load_study(tmp_path / "runs" / "study" / "tune").trials
    retry = next(t for t in trials if t.user_attrs.get("retries") == 0)
    assert retry.params == trials[0].params and retry.state.name == "COMPLETE"


def test_a_figure_searched_against_its_names_sense_is_warned(capsys):
    """A compress search minimizing accuracy and maximizing file size ran without a word (a user trial)."""
    from mlrun.tuning.runner import warn_unusual_directions

    warn_unusual_directions({"val/accuracy": "minimize", "file_bytes": "maximize", "latency_ms_b1": "minimize"})
    warn_unusual_directions({"val/loss": "minimize", "val/my_score": "minimize"})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "minimize val/accuracy" in lines[0] and "maximize file_bytes" in lines[1]
