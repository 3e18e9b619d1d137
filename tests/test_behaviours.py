"""Advertised training behaviours, each checked by its effect in a real run (not by calling its function).

Every test here was seen to fail with its behaviour removed (see the report of issue 13).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import read_jsonl, run_cli, tiny_config, write_config


def train(tmp_path: Path, config: dict, *args: str) -> Path:
    result = run_cli("train", write_config(tmp_path, config, f"{config['name']}.yaml"), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "runs" / config["name"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def sgd_config(name: str, lr: float = 0.5, **train) -> dict:
    config = tiny_config(name=name, optimizer={"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0})
    config["scheduler"] = {"name": "constant", "warmup_steps": 0}
    config["train"] = {**config["train"], "max_grad_norm": None, **train}
    return config


def test_warmup_is_the_lr_a_real_run_logs(tmp_path):
    config = tiny_config(name="warm", scheduler={"name": "constant", "warmup_steps": 10, "warmup_start_factor": 0.1})
    config["train"] = {**config["train"], "max_steps": 14, "log_every": "1st"}
    run = train(tmp_path, config)
    lrs = {line["step"]: line["train/lr"] for line in read_jsonl(run / "metrics.jsonl") if "train/lr" in line}
    peak = config["optimizer"]["lr"]
    for step in range(1, 15):  # the rate the next step will use, after `step` steps
        expected = peak * (0.1 + 0.9 * step / 10) if step < 10 else peak
        assert math.isclose(lrs[step], expected, rel_tol=1e-6), (step, lrs[step], expected)


def test_gradient_clipping_bounds_the_update(tmp_path):
    # One SGD step from the same start, with and without clipping: w_free - w_clipped = lr (1 - c/|g|) g,
    # so |w_free - w_clipped| = lr (|g| - c), with |g| the norm before clipping that the run logs.
    clip, lr = 0.05, 0.5
    free = train(tmp_path, sgd_config("free", lr, max_steps=1, log_every="1st"))
    clipped = train(tmp_path, sgd_config("clipped", lr, max_steps=1, log_every="1st", max_grad_norm=clip))
    norm = next(line["train/grad_norm"] for line in read_jsonl(clipped / "metrics.jsonl") if "train/grad_norm" in line)
    assert norm > 4 * clip  # the bound is active
    a, b = load_file(free / "model.safetensors"), load_file(clipped / "model.safetensors")
    moved = math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a))
    assert math.isclose(moved, lr * (norm - clip), rel_tol=1e-3), (moved, lr * (norm - clip))


def test_accumulation_averages_gradients_under_plain_sgd(tmp_path):
    # SGD's step scales with the gradient, so summing micro-batch gradients would double this step.
    data = {"name": "synthetic", "num_samples": 640, "num_features": 16, "batch_size": 64, "drop_last": True}
    big = train(tmp_path, {**sgd_config("big", 0.2, epochs=1), "data": data})
    small_config = {**sgd_config("small", 0.2, epochs=1, grad_accum_steps=2), "data": {**data, "batch_size": 32}}
    small = train(tmp_path, small_config)
    assert summary(big)["steps"] == summary(small)["steps"] == 8
    a, b = load_file(big / "model.safetensors"), load_file(small / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.parametrize("mode, status, steps", [("max", "early_stopped", 32), ("min", "completed", 64)])
def test_early_stopping_honours_its_mode(tmp_path, mode, status, steps):
    # val/loss falls every epoch of this run: "max" sees it worsen at once, "min" sees it improve.
    config = tiny_config(name=mode)
    config["train"] = {
        **config["train"],
        "epochs": 4,
        "early_stopping": {"monitor": "val/loss", "mode": mode, "patience": 1},
    }
    run = train(tmp_path, config)
    losses = [line["val/loss"] for line in read_jsonl(run / "metrics.jsonl") if "val/loss" in line]
    assert losses == sorted(losses, reverse=True)  # the premise: falling
    done = summary(run)
    assert (done["status"], done["steps"]) == (status, steps)


def test_augmentation_is_applied_by_the_training_loop(tmp_path):
    def config(name: str, augment: list) -> dict:
        record = str(tmp_path / f"{name}.pt")
        c = tiny_config(name=name, model={"name": "tests.fixtures:recording_mlp", "record": record})
        c["data"] = {**c["data"], "augment": augment}
        c["train"] = {**c["train"], "max_steps": 1}
        return c

    train(tmp_path, config("plain", []))
    train(tmp_path, config("noisy", [{"name": "gaussian_noise", "std": 0.5}]))
    plain, noisy = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "noisy.pt")
    assert plain.shape == noisy.shape
    assert math.isclose(float((noisy - plain).std()), 0.5, rel_tol=0.1)  # the same batch, with the noise


def test_ema_weights_are_what_evaluation_and_model_safetensors_use(tmp_path):
    config = tiny_config(name="ema", techniques=[{"name": "ema", "decay": 0.9}])
    run = train(tmp_path, config)
    raw = load_file(sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors")
    saved = load_file(run / "model.safetensors")
    assert any(not torch.equal(raw[k], saved[k]) for k in saved)  # the average, not the live weights
    # `mlrun eval` evaluates model.safetensors; the run's own final evaluation must give the same figures.
    evaluated = run_cli("eval", run, "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads(evaluated.stdout)["metrics"]
    final = summary(run)["final"]
    assert math.isclose(figures["val/loss"], final["val/loss"], rel_tol=1e-5), (figures, final)


def test_label_smoothing_changes_the_loss(tmp_path):
    def config(name: str, smoothing: float) -> dict:
        c = tiny_config(name=name, loss={"name": "cross_entropy", "label_smoothing": smoothing})
        c["train"] = {**c["train"], "epochs": 2}
        return c

    plain, smooth = train(tmp_path, config("plain", 0.0)), train(tmp_path, config("smooth", 0.3))
    # Smoothed targets keep a floor of entropy in the loss: the smoothed run ends with a higher loss.
    assert summary(smooth)["final"]["val/loss"] > summary(plain)["final"]["val/loss"] + 0.1


def test_pbt_exploit_copies_the_winners_checkpoint_and_explore_perturbs_its_values(tmp_path):
    import random

    from mlrun.config.schema import TuneConfig
    from mlrun.tuning.pbt import _exploit_and_explore

    tune = TuneConfig(
        metric="val/accuracy",
        direction="maximize",
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
    ],
)
def test_every_sampler_and_pruner_finishes_a_tiny_study(tmp_path, sampler, pruner):
    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    config = tiny_config(name="study", tracking=["jsonl"])
    config["train"] = {"epochs": 2, "eval_every": "8st", "checkpoint_every": None}
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": sampler != "grid"}}
    if sampler == "grid":
        space["optimizer.lr"]["step"] = 0.05
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
    assert report["states"]["complete"] + report["states"]["pruned"] == 3 and report["states"]["complete"] >= 1
