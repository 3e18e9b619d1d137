"""Schedules against closed-form values at chosen steps."""

from __future__ import annotations

import math

import pytest
import torch

from mlrun.optim.schedulers import LRSchedule
from mlrun.registry import schedulers
from tests.conftest import read_jsonl, tiny_config, train_run

LR, TOTAL, WARMUP = 0.1, 100, 10


def lrs(name: str, steps: list[int], warmup: int = WARMUP, start: float = 0.0, **settings) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=LR)
    schedule = LRSchedule(optimizer, schedulers.build(name, TOTAL, warmup, **settings), warmup, start)
    out = []
    for step in range(max(steps) + 1):
        if step in steps:
            out.append(schedule.last_lr())
        schedule.step()
    return out


def test_warmup_is_linear_from_start_factor():
    assert lrs("constant", [0, 5, 10, 50], start=0.1) == pytest.approx([0.01, 0.055, 0.1, 0.1])


def test_cosine_with_warmup_and_floor():
    floor = 0.1
    got = lrs("cosine", [10, 32, 55, 100], min_lr_ratio=floor)
    expected = [
        LR * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - WARMUP) / (TOTAL - WARMUP))))
        for s in [10, 32, 55, 100]
    ]
    assert got == pytest.approx(expected)
    assert got[-1] == pytest.approx(LR * floor)


def test_linear_decays_to_floor():
    assert lrs("linear", [10, 55, 100], min_lr_ratio=0.0) == pytest.approx([0.1, 0.05, 0.0])


def test_polynomial_power_two():
    assert lrs("polynomial", [55], power=2.0) == pytest.approx([LR * 0.5**2])


def test_step_and_exponential():
    assert lrs("step", [10, 29, 30, 50], step_size=20, gamma=0.5) == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert lrs("exponential", [10, 20], gamma=0.9) == pytest.approx([0.1, 0.1 * 0.9**10])


def test_cosine_restarts_restart_at_cycle_end():
    got = lrs("cosine_restarts", [10, 30, 40, 50], cycle_steps=30)
    assert got[0] == pytest.approx(LR) and got[3] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi / 3)))
    assert got[2] == pytest.approx(LR)  # step 40 starts the second cycle


def test_onecycle_peaks_after_pct_start_and_ends_low():
    got = lrs("onecycle", [0, 30, 100], warmup=0, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert got == pytest.approx([LR / 25, LR, LR / 25 / 1e4])


def test_onecycle_refuses_a_second_warmup():
    with pytest.raises(ValueError, match="own warm-up"):
        schedulers.build("onecycle", TOTAL, 5)


def test_plateau_reduces_after_patience_and_survives_state_dict():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=LR)
    schedule = LRSchedule(optimizer, schedulers.build("plateau", TOTAL, 0, patience=1, factor=0.5), 0, 0.0)
    for loss in [1.0, 0.9, 0.95, 0.95]:
        schedule.observe({"val/loss": loss})
    assert schedule.last_lr() == pytest.approx(0.05)
    state = schedule.state_dict()
    rebuilt = torch.optim.SGD([param], lr=LR)  # as a resumed run builds it from the config
    fresh = LRSchedule(rebuilt, schedulers.build("plateau", TOTAL, 0, patience=1, factor=0.5), 0, 0.0)
    fresh.load_state_dict(state)
    assert fresh.last_lr() == pytest.approx(0.05)


def test_warmup_is_the_lr_a_real_run_logs(tmp_path):
    config = tiny_config(name="warm", scheduler={"name": "constant", "warmup_steps": 10, "warmup_start_factor": 0.1})
    config["train"] = {**config["train"], "max_steps": 14, "log_every": "1st"}
    run = train_run(tmp_path, config)
    lrs = {line["step"]: line["train/lr"] for line in read_jsonl(run / "metrics.jsonl") if "train/lr" in line}
    peak = config["optimizer"]["lr"]
    for step in range(1, 15):  # the rate the next step will use, after `step` steps
        expected = peak * (0.1 + 0.9 * step / 10) if step < 10 else peak
        assert math.isclose(lrs[step], expected, rel_tol=1e-6), (step, lrs[step], expected)


def test_plateau_monitor_must_be_a_logged_figure(tmp_path):
    """The schedule's `watches` trait names its monitor setting; an unlogged figure exits 2 naming it."""
    from tests.conftest import run_cli, tiny_config, write_config

    config = tiny_config(scheduler={"name": "plateau", "monitor": "val/f1"})
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "scheduler.monitor: 'val/f1' is not logged" in result.stderr
