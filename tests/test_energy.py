"""Energy and carbon: RAPL counters (with wrap-around), the labelled CPU estimate, summary.json and profile."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from mlrun.energy.estimate import CpuEstimate
from mlrun.energy.rapl import open_rapl
from tests.conftest import run_cli, tiny_config, write_config


def fake_rapl(root: Path, packages: dict[int, tuple[int, int]]) -> Path:
    """A powercap folder: package N with (energy_uj, max_energy_range_uj), plus a sub-zone to ignore."""
    for index, (energy, max_range) in packages.items():
        zone = root / f"intel-rapl:{index}"
        zone.mkdir(parents=True)
        (zone / "energy_uj").write_text(str(energy))
        (zone / "max_energy_range_uj").write_text(str(max_range))
        sub = root / f"intel-rapl:{index}:0"  # the cores of the package: already inside its figure
        sub.mkdir()
        (sub / "energy_uj").write_text("123456789")
        (sub / "max_energy_range_uj").write_text(str(max_range))
    return root


def test_rapl_adds_packages_and_counts_across_a_wrap_around(tmp_path):
    root = fake_rapl(tmp_path, {0: (900_000, 1_000_000), 1: (5_000, 1_000_000)})
    counter, why = open_rapl(root)
    assert why is None and [z.name for z in counter.zones] == ["intel-rapl:0", "intel-rapl:1"]
    counter.start()
    (root / "intel-rapl:0" / "energy_uj").write_text("950000")  # +50 000 uJ
    counter.poll()
    (root / "intel-rapl:0" / "energy_uj").write_text("30000")  # wrapped: +50 000 to the top, +30 000 after
    (root / "intel-rapl:1" / "energy_uj").write_text("25000")  # +20 000 uJ
    counter.poll()
    assert counter.joules() == pytest.approx((50_000 + 50_000 + 30_000 + 20_000) / 1e6)


def test_missing_rapl_folder_says_why(tmp_path):
    counter, why = open_rapl(tmp_path / "nowhere")
    assert counter is None and "no RAPL package counters" in why


def test_cpu_estimate_is_rated_power_times_cpu_seconds_over_cores():
    estimate = CpuEstimate(cpu_watts=100.0, siblings=False)
    estimate.start()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 s of CPU in this process
        pass
    estimate.poll()
    described = estimate.describe()
    assert described["cpu_seconds"] >= 0.25
    assert estimate.joules() == pytest.approx(100.0 * estimate.cpu_seconds() / estimate.cores)
    assert estimate.estimate is True and estimate.source == "estimate"


def test_train_writes_estimated_energy_labelled_as_estimate(tmp_path):
    config = tiny_config(energy={"rapl_root": str(tmp_path / "no-rapl"), "grid_g_per_kwh": 100.0, "cpu_watts": 50.0})
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    energy = summary["energy"]
    assert energy["estimate"] is True and energy["source"] == "estimate"
    assert energy["parts"][0]["cpu_watts"] == 50.0 and energy["joules"] > 0
    assert energy["kwh"] == pytest.approx(energy["joules"] / 3.6e6)  # the literal, not the code's own constant
    assert energy["co2_g"] == pytest.approx(energy["kwh"] * 100.0)
    samples = 512 * 3  # 3 epochs of the 512 training samples
    assert energy["joules_per_sample"] == pytest.approx(energy["joules"] / samples)
    assert "ESTIMATE" in result.stdout and "g CO2 at 100 g/kWh" in result.stdout


def test_train_measures_rapl_energy_exactly(tmp_path):
    root = fake_rapl(tmp_path / "powercap", {0: (0, 10**12)})
    counter = root / "intel-rapl:0" / "energy_uj"
    config = tiny_config(
        model={"name": "tests.fixtures:rapl_heater", "counter": str(counter), "uj_per_forward": 2_000_000},
        energy={"rapl_root": str(root)},
    )
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    energy = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())["energy"]
    forwards = int((counter.parent / "forwards").read_text())  # each training forward added 2 J
    assert forwards >= 16 * 3  # the 48 steps (and a dry run, if it runs in training mode)
    assert energy["estimate"] is False and energy["source"] == "rapl"
    assert energy["joules"] == pytest.approx(2.0 * forwards)
    assert energy["co2_g"] == pytest.approx(2.0 * forwards / 3.6e6 * 475.0)
    assert "ESTIMATE" not in result.stdout


def test_energy_can_be_switched_off(tmp_path):
    config = tiny_config(energy={"enabled": False}, train={"max_steps": 3, "log_every": "1st"})
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    assert "energy" not in json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())


def test_profile_reports_energy_of_the_measured_steps(tmp_path):
    config = tiny_config(energy={"rapl_root": str(tmp_path / "no-rapl")})
    result = run_cli("profile", write_config(tmp_path, config), "--steps", "5", "--warmup", "1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    energy = json.loads(result.stdout)["energy"]
    assert energy["estimate"] is True and energy["joules_per_step"] == pytest.approx(energy["joules"] / 5)
    assert energy["joules_per_sample"] == pytest.approx(energy["joules"] / (5 * 32))


def test_a_resumed_run_adds_the_energy_of_its_earlier_attempts(tmp_path):
    config = tiny_config(energy={"rapl_root": str(tmp_path / "no-rapl")}, train={"max_steps": 4, "log_every": "2st"})
    path = write_config(tmp_path, config)
    assert run_cli("train", path, cwd=tmp_path).returncode == 0
    run = tmp_path / "runs" / "tiny"
    first = json.loads((run / "summary.json").read_text())["energy"]["joules"]
    result = run_cli(
        "train", path, "train.max_steps=8", "--resume", run / "checkpoints" / "step-00000004", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    energy = json.loads((run / "summary.json").read_text())["energy"]
    assert energy["previous_attempts_joules"] == first
    assert energy["joules"] == pytest.approx(first + sum(part["joules"] for part in energy["parts"]), abs=1e-3)


@pytest.mark.e2e
def test_a_run_resumed_after_sigkill_counts_the_killed_attempts_energy(tmp_path):
    """A process killed by SIGKILL writes no summary.json; its checkpoints carry the running total."""
    root = fake_rapl(tmp_path / "powercap", {0: (0, 10**12)})
    counter = root / "intel-rapl:0" / "energy_uj"
    armed = tmp_path / "armed"
    armed.touch()
    config = tiny_config(
        model={"name": "tests.fixtures:rapl_heater", "counter": str(counter), "uj_per_forward": 2_000_000},
        energy={"rapl_root": str(root)},
        train={"max_steps": 8, "log_every": "2st", "eval_every": "4st", "checkpoint_every": "3st"},
        techniques=[{"name": "tests.fixtures:kill_at_step", "step": 7, "armed_file": str(armed)}],
    )
    path = write_config(tmp_path, config)
    killed = run_cli("train", path, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL  # after step 7; the newest checkpoint is step 6
    run = tmp_path / "runs" / "tiny"
    assert not (run / "summary.json").exists()
    resumed = run_cli("train", path, cwd=tmp_path, subprocess=False)  # only the killed attempt needs its own process
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    energy = json.loads((run / "summary.json").read_text())["energy"]
    # Each training forward heats 2 J: 6 steps before the checkpoint, then steps 7 and 8 again.
    assert energy["previous_attempts_joules"] == pytest.approx(2.0 * 6)
    assert energy["joules"] == pytest.approx(2.0 * 8)
    assert energy["kwh"] == pytest.approx(16.0 / 3.6e6)  # the literal: a wrong constant would pass a self-check
    # Over every attempt's seconds; attempts_s is rounded to the millisecond (a run of a quarter second here).
    seconds = (energy["attempts_s"] - 5e-4, energy["attempts_s"] + 5e-4)
    assert energy["joules"] / seconds[1] - 1e-3 <= energy["mean_watts"] <= energy["joules"] / seconds[0] + 1e-3
    assert energy["attempts_s"] > energy["measured_s"]


def test_an_earlier_attempt_estimated_at_zero_joules_is_reported_as_zero_not_as_none():
    """A run of milliseconds can be estimated at 0 J; its resume still had an earlier attempt (it read None)."""
    from mlrun.energy.meter import energy_figures

    assert energy_figures([], 1.0, 10, 400.0, [], previous=(0.0, 0.014))["previous_attempts_joules"] == 0.0
    assert energy_figures([], 1.0, 10, 400.0, [])["previous_attempts_joules"] is None
