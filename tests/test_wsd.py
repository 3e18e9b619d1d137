"""The wsd schedule: its shape, and a run extended from its stable phase equal to one configured long."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import read_jsonl, run_cli, tiny_config, write_config
from tests.test_schedulers import LR, TOTAL, WARMUP, lrs
from tests.test_train import weights

# 20 batches an epoch; checkpoints every 10 steps, all kept: a stable-phase one survives the end.
DATA = {"name": "synthetic", "num_samples": 640, "num_features": 16, "num_classes": 4, "batch_size": 32}
WSD = {"name": "wsd", "warmup_steps": 5, "decay_fraction": 0.25, "shape": "linear"}


def test_wsd_holds_the_peak_then_decays_over_the_last_fraction():
    # decay_fraction 0.2 of 100 steps: stable until step 80, then linear to the floor at step 100.
    got = lrs("wsd", [5, 10, 79, 80, 90, 100], decay_fraction=0.2, shape="linear", min_lr_ratio=0.1)
    assert got == pytest.approx([0.05, LR, LR, LR, LR * (0.1 + 0.9 * 0.5), LR * 0.1])


def test_wsd_shapes_and_decay_steps():
    half = lambda shape: lrs("wsd", [90], decay_steps=20, shape=shape)[0]  # noqa: E731 - halfway through the decay
    assert half("linear") == pytest.approx(LR * 0.5)
    assert half("cosine") == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi / 2)))
    assert half("sqrt") == pytest.approx(LR * (1 - math.sqrt(0.5)))
    assert lrs("wsd", [WARMUP, TOTAL], decay_fraction=1.0, shape="linear") == pytest.approx([LR, 0.0])


def wsd_run(tmp_path, name: str, steps: int, *args: str):
    config = tiny_config(name=name, data=DATA, scheduler=WSD)
    config["train"] = {"max_steps": steps, "log_every": "1st", "eval_every": "10st", "checkpoint_every": "10st"}
    config["train"]["keep_checkpoints"] = 10
    result = run_cli("train", write_config(tmp_path, config, f"{name}.yaml"), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "runs" / name


def test_extended_from_the_stable_phase_equals_a_run_configured_long(tmp_path):
    # 40 steps: stable until step 30. Extended from step 30 to 80: stable until 60, decayed once, at the end.
    long = wsd_run(tmp_path, "long", 80)
    short = wsd_run(tmp_path, "short", 40)
    lr_of = lambda run: {x["step"]: x["train/lr"] for x in read_jsonl(run / "metrics.jsonl") if "train/lr" in x}  # noqa: E731
    assert lr_of(short)[40] == pytest.approx(0.0) and lr_of(short)[30] == pytest.approx(1e-2)
    wsd_run(tmp_path, "short", 80, "--resume", str(short / "checkpoints" / "step-00000030"))
    a, b = weights(long), weights(short)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert lr_of(short) == lr_of(long)  # the short run's decay (steps 31-40) was replaced, not kept
    assert lr_of(short)[60] == pytest.approx(1e-2) and lr_of(short)[70] == pytest.approx(5e-3)


def test_resuming_inside_the_decay_with_another_length_is_refused(tmp_path):
    short = wsd_run(tmp_path, "short", 40)
    config = tiny_config(name="short", data=DATA, scheduler=WSD)
    config["train"] = {"max_steps": 80, "log_every": "1st", "eval_every": "10st", "checkpoint_every": "10st"}
    path = write_config(tmp_path, config, "again.yaml")
    result = run_cli("train", path, "--resume", str(short / "checkpoints" / "step-00000040"), cwd=tmp_path)
    assert result.returncode == 2
    assert "inside the decay that began at step 30" in result.stderr and "at or before step 30" in result.stderr
    assert "UsageError" not in result.stderr and "config changed" not in result.stderr  # the refusal, as it was raised
