"""`mlrun lr-find`: the range test runs the training loop, stops at the blow-up and suggests a rate."""

from __future__ import annotations

import json
import math

import pytest

from mlrun.optim.schedulers import lr_range
from mlrun.tuning.lr_suggest import suggest
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


# `mlrun lr-find configs/quickstart.yaml --steps 30`: flat, falling to 0.61 near lr 6e-2, then a blow-up
# to 247 that, smoothed backwards, once pulled the minimum to the first step (suggestion 1e-8).
SHORT_SWEEP_LOSSES = [
    2.3122, 2.3281, 2.3122, 2.3311, 2.3508, 2.3209, 2.3451, 2.3143, 2.3369, 2.3396, 2.3259, 2.3150, 2.3120,
    2.3147, 2.2987, 2.2799, 2.2332, 2.0995, 1.9658, 1.7033, 1.0973, 0.6143, 1.4156, 15.104, 25.859, 247.49,
]  # fmt: skip


def test_a_blow_up_does_not_drag_the_suggestion_out_of_the_sweep():
    lrs = [1e-7 * 10 ** (8 * i / 29) for i in range(len(SHORT_SWEEP_LOSSES))]
    s = suggest(lrs, SHORT_SWEEP_LOSSES, beta=0.8)
    assert s.method == "steepest" and 5e-3 < s.lr < 0.1, s.reason
    assert s.diverged_at_lr is not None and s.lr < s.diverged_at_lr
    assert suggest(lrs, SHORT_SWEEP_LOSSES, beta=0.8, method="min10").lr >= lrs[0]


def test_a_flat_or_short_curve_gives_no_suggestion_and_says_why():
    lrs = [1e-7 * 10 ** (2 * i / 39) for i in range(40)]
    flat = [2.30 + 0.01 * math.sin(i) for i in range(40)]
    s = suggest(lrs, flat, beta=0.8)
    assert s.lr is None and s.reason.startswith("too flat to judge") and "--end" in s.reason
    falling_at_once = [2.0 - 0.1 * i for i in range(4)] + [40.0 * i for i in range(1, 7)]
    s = suggest(lrs[:10], falling_at_once, beta=0.8)
    assert s.lr is None and s.reason.startswith("too short to judge") and "--start" in s.reason


# `mlrun lr-find configs/quickstart.yaml --start 1e-7 --end 1e-5 --steps 30`: flat at 2.30-2.35 all the way, its
# noisy minimum at the first step; it was called "too short: start the sweep lower", with min10_lr 1e-8.
FLAT_NOISY_LOSSES = [
    2.312, 2.328, 2.312, 2.331, 2.351, 2.321, 2.345, 2.315, 2.338, 2.341, 2.328, 2.320, 2.320, 2.333, 2.331,
    2.345, 2.330, 2.302, 2.317, 2.327, 2.321, 2.314, 2.325, 2.344, 2.332, 2.321, 2.323, 2.315, 2.327, 2.321,
]  # fmt: skip


def test_a_flat_curve_with_its_noisy_minimum_first_is_too_flat_not_too_short():
    lrs = [1e-7 * 10 ** (2 * i / 29) for i in range(len(FLAT_NOISY_LOSSES))]
    s = suggest(lrs, FLAT_NOISY_LOSSES, beta=0.8)
    assert s.lr is None and s.reason.startswith("too flat to judge") and "--end" in s.reason, s.reason
    assert "--start" not in s.reason  # a lower start is flatter still
    assert s.min10_lr is None  # a tenth of lr 1e-7 lies below the sweep: never measured, so not reported


def test_lr_find_on_a_flat_sweep_exits_0_with_no_suggestion(tmp_path):
    result = run_cli(
        "lr-find", write_config(tmp_path, digits_config(name="adamw")), "--steps", "20", "--end", "1e-5", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["suggested_lr"] is None and report["next"] is None and "too flat" in report["reason"]


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


def test_the_curve_is_in_optimizer_lr_units_when_a_group_logs_a_larger_rate(tmp_path):
    """train/lr logs the largest group's rate, so a head at lr_scale 10 made the suggestion 10x too
    high for optimizer.lr (a user trial)."""
    from mlrun.tuning.lr_range import read_curve

    start, ratio = 1e-6, 1.5
    for scale in (1.0, 10.0):
        lines = [{"step": k, "train/loss": 1.0, "train/lr": scale * start * ratio**k} for k in range(1, 6)]
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        lrs, _ = read_curve(tmp_path / "metrics.jsonl", start)
        assert lrs == pytest.approx([start * ratio**k for k in range(5)])


def test_the_next_command_keeps_the_sweeps_overrides_but_not_the_lr_it_replaces(tmp_path):
    """`next:` dropped the overrides the sweep ran with (another name, batch, weight decay; a user trial),
    then echoed the user's own optimizer.lr before the suggestion (`optimizer.lr=100 optimizer.lr=0.0104`)."""
    report = lr_find(tmp_path, digits_config(name="adamw"), "optimizer.lr=100", "optimizer.weight_decay=0.05")
    assert report["next"].endswith(f" optimizer.weight_decay=0.05 optimizer.lr={report['suggested_lr']:.3g}")
    assert report["next"].count("optimizer.lr=") == 1


def test_a_short_sweep_cautions_that_its_suggestion_moves_with_steps(tmp_path, adamw_sweep):
    """quickstart suggested 1.7e-3 at 200 steps and 1.0e-2 at 60, with no word that the length matters."""
    assert adamw_sweep[1]["caution"] is None  # 120 steps: the smoothing is ~5% of the sweep
    config = write_config(tmp_path, digits_config(name="adamw"))
    result = run_cli("lr-find", config, "--steps", "60", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    caution = [line for line in result.stdout.splitlines() if line.strip().startswith("caution:")]
    assert len(caution) == 1 and "--steps 200" in caution[0], result.stdout
