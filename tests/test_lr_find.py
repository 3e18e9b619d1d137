"""`mlrun lr-find`: the range test runs the training loop, stops at the blow-up and suggests a rate."""

from __future__ import annotations

import json
import math

import pytest

from mlrun.optim.schedulers import lr_range
from mlrun.tuning.lr_range import suggest
from tests.conftest import run_cli, tiny_config, write_config


def digits_config(**optimizer) -> dict:
    return tiny_config(
        name="digits",
        model={"name": "mlp", "hidden_sizes": [64], "dropout": 0.0},
        data={"name": "digits", "batch_size": 64},
        optimizer=optimizer,
    )


def lr_find(tmp_path, config: dict, *args) -> dict:
    result = run_cli("lr-find", write_config(tmp_path, config), "--steps", "120", *args, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)  # --json: one document, nothing else on stdout


def test_lr_range_schedule_ramps_exponentially_from_lr_to_end_factor():
    curve = lr_range(101, 0, end_factor=1e6)
    assert curve(0) == 1.0 and curve(100) == pytest.approx(1e6) and curve(50) == pytest.approx(1e3)


def test_suggestion_is_where_a_known_loss_curve_falls_fastest():
    lrs = [1e-6 * 10 ** (7 * i / 299) for i in range(300)]
    # Falls fastest (per decade) at lr 1e-3, is lowest near 1e-1, then blows up.
    losses = [2 - math.tanh(math.log10(lr / 1e-3)) + (50 * (lr - 0.1) if lr > 0.1 else 0) for lr in lrs]
    s = suggest(lrs, losses, beta=0.9)
    assert s.method == "steepest" and 1e-3 / 1.5 < s.lr < 1e-3 * 1.5
    assert s.diverged_at_lr is not None and s.diverged_at_lr > 0.1
    assert suggest(lrs, losses, beta=0.9, method="min10").lr == pytest.approx(s.min_loss_lr / 10)


@pytest.fixture(scope="module")
def adamw_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adamw")
    return folder, lr_find(folder, digits_config(name="adamw"))


def test_lr_find_on_digits_suggests_a_sensible_adamw_rate_and_writes_a_plot(adamw_sweep):
    tmp_path, report = adamw_sweep
    assert 3e-4 < report["suggested_lr"] < 3e-2, report["reason"]
    assert report["stopped_early"] and report["diverged_at_lr"] > report["suggested_lr"]
    assert report["curve"][0]["lr"] == pytest.approx(1e-7)
    assert all(b["lr"] > a["lr"] for a, b in zip(report["curve"], report["curve"][1:]))
    folder = tmp_path / "runs" / "digits" / "lr_find"
    assert (folder / "lr_find.png").stat().st_size > 10_000 and (folder / "metrics.jsonl").is_file()
    assert json.loads((folder / "lr_find.json").read_text())["suggested_lr"] == report["suggested_lr"]


def test_suggestion_moves_with_the_loss_landscape_plain_sgd_wants_a_larger_rate(tmp_path, adamw_sweep):
    adamw = adamw_sweep[1]["suggested_lr"]
    sgd = lr_find(tmp_path, digits_config(name="sgd", momentum=0.0))["suggested_lr"]
    assert sgd > 10 * adamw  # Adam normalises the gradient's scale; plain SGD steps by it


def test_lr_find_rejects_an_inverted_range(tmp_path):
    result = run_cli(
        "lr-find", write_config(tmp_path, digits_config(name="adamw")), "--start", "1", "--end", "0.1", cwd=tmp_path
    )
    assert result.returncode == 2 and "0 < start < end" in result.stderr and "Traceback" not in result.stderr
