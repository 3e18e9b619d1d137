"""`mlrun train` through the real CLI: learning, run directory, resume, precision, failure policies."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, read_jsonl, run_cli, start_cli, tiny_config, train_run, write_config

PROBE = "tests.fixtures:probe_mlp"


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def train(tmp_path: Path, config: dict, *args: str, **run) -> tuple:
    """`mlrun train` of `config`: (result, run directory); `run` goes to run_cli (subprocess=...)."""
    path = write_config(tmp_path, config, f"{config['name']}.yaml")
    result = run_cli("train", path, *args, cwd=tmp_path, **run)
    return result, tmp_path / "runs" / config["name"]


def test_quickstart_reaches_its_accuracy_and_writes_the_run_directory(tmp_path):
    result = run_cli(
        "train", REPO / "configs" / "quickstart.yaml", "tracking=[console, jsonl, tensorboard]", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "quickstart"
    for name in [
        "config.yaml",
        "manifest.json",
        "metrics.jsonl",
        "model.safetensors",
        "best.safetensors",
        "summary.json",
        "tensorboard",
        "checkpoints",
    ]:
        assert (run / name).exists(), name
    done = summary(run)
    assert done["status"] in ("completed", "early_stopped")
    assert done["best"]["value"] >= 0.96 and done["final"]["val/accuracy"] >= 0.95
    assert done["samples_per_s"] > 0 and done["peak_memory_bytes"] > 0
    lines = read_jsonl(run / "metrics.jsonl")
    train_losses = [line["train/loss"] for line in lines if "train/loss" in line]
    assert train_losses[-1] < train_losses[0] / 5  # loss falls
    assert all({"step", "epoch", "time"} <= set(line) for line in lines)
    assert any("val/accuracy" in line for line in lines)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 1 and manifest["data_fingerprint"]["train"]
    assert all(c.name.startswith("step-") for c in (run / "checkpoints").iterdir())
    assert len(list((run / "checkpoints").iterdir())) <= 2  # keep_checkpoints


@pytest.mark.parametrize("every, steps", [("1ep", [16, 32, 48]), ("2ep", [32, 48]), ("15st", [15, 30, 45, 48])])
def test_training_figures_are_logged_in_the_unit_asked(tmp_path, every, steps):
    """log_every: 1ep logged every step (the count was read as steps, the unit ignored; a user trial)."""
    config = tiny_config(name=f"log{every}", tracking=["jsonl"])  # 512 training samples of 32: 16 steps an epoch
    config["train"] = {**config["train"], "log_every": every}
    run = train_run(tmp_path, config)
    logged = [line["step"] for line in read_jsonl(run / "metrics.jsonl") if "train/loss" in line]
    assert logged == steps  # the run's last step is always logged, once


def test_tensorboard_events_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, run = train(tmp_path, tiny_config(tracking=["jsonl", "tensorboard"]))
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/loss", "val/accuracy"} <= set(tags)
    assert len(events.Scalars("val/accuracy")) == 3  # one per epoch


def test_accumulation_matches_one_large_batch(tmp_path):
    data = {"name": "synthetic", "num_samples": 1280, "num_features": 16, "batch_size": 64, "drop_last": True}
    big = tiny_config(name="big", data=data)
    small = tiny_config(name="small", data={**data, "batch_size": 16})
    small["train"] = {**small["train"], "grad_accum_steps": 4}
    for config in (big, small):
        result, _ = train(tmp_path, config)
        assert result.returncode == 0, result.stderr
    a, b = weights(tmp_path / "runs" / "big"), weights(tmp_path / "runs" / "small")
    assert summary(tmp_path / "runs" / "small")["steps"] == summary(tmp_path / "runs" / "big")["steps"] == 48
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def exact_resume_config(name: str, **model) -> dict:
    config = tiny_config(name=name, model={"name": PROBE, **model})  # dropout 0.2 and shuffling on
    config["train"] = {**config["train"], "checkpoint_every": "7st"}  # 16 batches an epoch: mid-epoch checkpoints
    return config


def straight_and_resumed(tmp_path: Path, **sections) -> tuple[Path, Path]:
    """The exact-resume probe (with `sections` replaced) trained straight, and trained again killed by
    SIGKILL at forward 24 (after the step-21 checkpoint) then resumed: (straight run, resumed run).
    Only the killed run needs a process of its own; the others run in this one (tests/cli_runner.py)."""
    result, straight = train(tmp_path, {**exact_resume_config("straight"), **sections}, subprocess=False)
    assert result.returncode == 0, result.stderr
    killed, run = train(tmp_path, {**exact_resume_config("resumed", kill_at=24), **sections}, subprocess=True)
    assert killed.returncode == -signal.SIGKILL
    # The config differs from the killed one's only in kill_at (the probe's kill switch).
    resumed, _ = train(
        tmp_path, {**exact_resume_config("resumed"), **sections}, "--allow-config-change", subprocess=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 21" in resumed.stdout
    return straight, run


@pytest.mark.e2e  # a run dies by SIGKILL
def test_resume_after_sigkill_mid_epoch_is_bit_identical(tmp_path):
    # The straight run and the resume run in this process, the run that dies in its own (tests/cli_runner.py).
    result, straight = train(tmp_path, exact_resume_config("straight"), subprocess=False)
    assert result.returncode == 0, result.stderr
    # Dies by SIGKILL at the 24th training forward: after the step-21 checkpoint, inside epoch 2.
    killed, run = train(tmp_path, exact_resume_config("resumed", kill_at=24), subprocess=True)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step")][-1] == "step-00000021"
    # Same run dir, --resume auto; the config differs from the killed one's only in kill_at.
    resumed, _ = train(tmp_path, exact_resume_config("resumed"), "--allow-config-change", subprocess=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 21" in resumed.stdout
    a, b = weights(straight), weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop_time = lambda lines: [
        {k: v for k, v in x.items() if k not in ("time", "train/samples_per_s", "train/data_wait_fraction")}
        for x in lines
    ]
    assert drop_time(read_jsonl(run / "metrics.jsonl")) == drop_time(read_jsonl(straight / "metrics.jsonl"))


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    config = tiny_config(name="crashy")
    result, run = train(tmp_path, config, "train.epochs=1")
    assert result.returncode == 0
    good = sorted((run / "checkpoints").iterdir())[-1]
    # A process killed mid-write leaves only a temporary folder behind.
    half = run / "checkpoints" / ".tmp-step-00000099"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    (run / "summary.json").unlink()  # as if the run never finished
    resumed, _ = train(tmp_path, config, "train.epochs=2", "--allow-config-change")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {int(good.name[5:])}" in resumed.stdout
    assert not half.exists()


def test_bf16_autocast_runs_on_cpu(tmp_path):
    probe = tmp_path / "dtype.json"
    result, run = train(
        tmp_path, tiny_config(name="bf16", model={"name": PROBE, "dtype_file": str(probe)}), "train.precision=bf16"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(probe.read_text()) == {"dtype": "torch.bfloat16", "autocast": True}  # computed in bf16
    assert summary(run)["final"]["val/accuracy"] > 0.5
    assert json.loads((run / "manifest.json").read_text())["precision"] == "bf16"


def test_early_stopping_stops_and_says_so(tmp_path):
    config = tiny_config(name="early")
    config["train"] = {
        **config["train"],
        "epochs": 40,
        "early_stopping": {"monitor": "val/loss", "patience": 1, "min_delta": 0.5},
    }
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "early_stopped" and done["epochs"] == 2.0


def test_nonfinite_loss_stops_with_exit_1_and_names_the_step(tmp_path):
    result, run = train(tmp_path, tiny_config(name="nan", model={"name": PROBE, "nan_at": [30]}))
    assert result.returncode == 1
    assert "NaN or infinite at step 30" in result.stderr and "Traceback" not in result.stderr
    done = summary(run)
    assert done["status"] == "failed" and "step 30" in done["message"]
    assert done["last_checkpoint"].endswith("step-00000016")  # the epoch-1 checkpoint, written before the NaN


def test_a_run_that_failed_before_its_first_checkpoint_says_so_consistently(tmp_path):
    """A NaN at step 3, read at the log of step 5: 'failed after 5 steps' beside 'NaN at step 3' read as a
    contradiction; then export said 'mlrun train resumes it' of a run with no checkpoint to resume."""
    result, run = train(tmp_path, tiny_config(name="nan", model={"name": PROBE, "nan_at": [3]}))
    assert result.returncode == 1
    assert "failed after 5 steps" in result.stdout
    assert "NaN or infinite at step 3 (found at step 5: the loss is read every train.log_every)" in result.stderr
    assert summary(run)["steps"] == 5 and summary(run)["last_checkpoint"] is None
    exported = run_cli("export", run, cwd=tmp_path)
    assert exported.returncode == 2 and "failed before writing a checkpoint" in exported.stderr
    assert "resumes" not in exported.stderr


def test_nonfinite_loss_skip_policy_skips_and_counts(tmp_path):
    result, run = train(
        tmp_path, tiny_config(name="skip", model={"name": PROBE, "nan_at": [5, 30]}), "train.on_nonfinite=skip"
    )
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "completed" and done["nonfinite_skipped"] == 2
    assert all(torch.isfinite(t).all() for t in weights(run).values())


def wait_for(path: Path, process, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.e2e  # signals a running process
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_marks_interrupted(tmp_path, sig, code):
    config = tiny_config(name="sig", model={"name": "tests.fixtures:slow_mlp", "sleep_s": 0.02})
    config["train"] = {**config["train"], "epochs": 50, "log_every": "1st"}
    path = write_config(tmp_path, config)
    process = start_cli("train", path, cwd=tmp_path)
    run = tmp_path / "runs" / "sig"
    wait_for(run / "metrics.jsonl", process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "mlrun: interrupted: stopped by signal" in stderr and "error" not in stderr
    assert ("Ctrl-C again" in stderr) == (sig == signal.SIGINT), stderr  # a second SIGTERM is no keypress
    done = summary(run)
    assert done["status"] == "interrupted" and 0 < done["steps"] < done["total_steps"]
    assert done["last_checkpoint"].endswith(f"step-{done['steps']:08d}")
    again = run_cli(
        "train",
        path,
        "train.max_steps=" + str(done["steps"] + 2),
        "--allow-config-change",
        cwd=tmp_path,
        subprocess=False,
    )
    assert again.returncode == 0 and f"resumed at step {done['steps']}" in again.stdout
    ended = json.loads((run / "summary.json").read_text())  # the end line: the whole run's training time and rate
    assert f"{ended['train_time_s']:.1f}s of training" in again.stdout, again.stdout


def test_a_signal_during_the_final_evaluation_still_stops_the_command(tmp_path, monkeypatch):
    """Ctrl-C while a run evaluated and saved at its end was acknowledged, then dropped: exit 0, and a
    compress chain went on to its next stage (a user trial)."""
    import os

    from mlrun.engine.loop import TrainingLoop

    finish = TrainingLoop._finish

    def interrupted_finish(loop):
        os.kill(os.getpid(), signal.SIGINT)  # handled by the loop's handler: a flag, as a real Ctrl-C
        finish(loop)

    monkeypatch.setattr(TrainingLoop, "_finish", interrupted_finish)
    result, run = train(tmp_path, tiny_config(name="last"), "train.epochs=1")
    assert result.returncode == 130 and "stopped by signal" in result.stderr, result.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert (run / "model.safetensors").is_file()
    monkeypatch.setattr(TrainingLoop, "_finish", finish)
    again, _ = train(tmp_path, tiny_config(name="last"), "train.epochs=1")  # the rerun finds it at its end
    assert again.returncode == 0 and json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert json.loads((run / "summary.json").read_text())["steps"] == 16


def test_a_ctrl_c_before_the_loops_handler_is_a_stop_not_a_failure(tmp_path, monkeypatch):
    """A Ctrl-C as the loop started printed "failed after 0 steps" and wrote status failed (a user trial)."""
    from mlrun.engine.log_window import LogWindow

    opened = LogWindow.start
    calls = []

    def pressed(window):  # built with the loop, then opened again as it starts to run: Ctrl-C then
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        opened(window)

    monkeypatch.setattr(LogWindow, "start", pressed)
    result, run = train(tmp_path, tiny_config(name="early"), "train.epochs=1")
    assert result.returncode == 130 and "failed" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_finished_run_is_not_overwritten_without_flag(tmp_path):
    result, run = train(tmp_path, tiny_config(name="once"), "train.epochs=1")
    assert result.returncode == 0
    again, _ = train(tmp_path, tiny_config(name="once"), "train.epochs=1")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    never, _ = train(tmp_path, tiny_config(name="once"), "train.epochs=1", "--resume", "never")
    assert never.returncode == 2 and "already finished" in never.stderr  # it advised --resume auto, which refused
    forced, _ = train(tmp_path, tiny_config(name="once"), "train.epochs=1", "--overwrite")
    assert forced.returncode == 0
    # A run named into the first one's checkpoints/ was trained among its step folders (a user trial).
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    inside, _ = train(tmp_path, tiny_config(name="checkpoints"), "output_dir=runs/once", "train.epochs=1")
    assert inside.returncode == 2 and "is inside the checkpoints of the run" in inside.stderr, inside.stderr
    deeper, _ = train(tmp_path, tiny_config(name="x"), "output_dir=runs/once/checkpoints", "train.epochs=1")
    assert deeper.returncode == 2 and "is inside the checkpoints of the run" in deeper.stderr, deeper.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints


def test_ema_weights_are_evaluated_and_saved(tmp_path):
    result, run = train(tmp_path, tiny_config(name="ema", techniques=[{"name": "ema", "decay": 0.9}]))
    assert result.returncode == 0, result.stderr
    raw = load_file(sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors")
    saved = weights(run)
    assert any(not torch.equal(raw[k], saved[k]) for k in saved)  # the average, not the live weights


def test_activation_checkpointing_trains_the_same_weights(tmp_path):
    plain, _ = train(tmp_path, tiny_config(name="plain"))
    ckpt, _ = train(tmp_path, tiny_config(name="ckpt", techniques=["activation_checkpointing"]))
    assert plain.returncode == 0 and ckpt.returncode == 0, ckpt.stderr
    a, b = weights(tmp_path / "runs" / "plain"), weights(tmp_path / "runs" / "ckpt")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_early_stopping_can_watch_a_training_figure(tmp_path):
    config = tiny_config(name="trainwatch")
    config["train"] = {
        **config["train"],
        "epochs": 40,
        "best": {"monitor": "train/loss"},
        "early_stopping": {"monitor": "train/loss", "patience": 2, "min_delta": 10.0},
    }
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    done = summary(run)
    assert done["status"] == "early_stopped" and done["best"]["monitor"] == "train/loss"
    assert (run / "best.safetensors").exists()


def test_compiled_model_trains(tmp_path):
    result, run = train(tmp_path, tiny_config(name="compiled"), "train.compile=true", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert summary(run)["final"]["val/accuracy"] > 0.5
    assert not any(k.startswith("_orig_mod") for k in weights(run))  # saved without the compile wrapper


@pytest.mark.e2e  # a run dies by SIGKILL
def test_data_loader_workers_train_and_resume_exactly(tmp_path):
    data = {"name": "synthetic", "num_samples": 640, "num_features": 16, "batch_size": 32, "num_workers": 2}
    straight = exact_resume_config("w_straight")
    killed = exact_resume_config("w_resumed", kill_at=24)
    for config in (straight, killed):
        config["data"] = data
    assert train(tmp_path, straight, subprocess=False)[0].returncode == 0
    assert train(tmp_path, killed, subprocess=True)[0].returncode == -signal.SIGKILL
    del killed["model"]["kill_at"]
    assert train(tmp_path, killed, "--allow-config-change", subprocess=False)[0].returncode == 0
    a, b = weights(tmp_path / "runs" / "w_straight"), weights(tmp_path / "runs" / "w_resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_optimizer_in_backward_trains_like_the_plain_optimizer(tmp_path):
    plain, _ = train(tmp_path, tiny_config(name="plainopt"))
    inback, _ = train(tmp_path, tiny_config(name="inback", techniques=["optimizer_in_backward"]))
    assert plain.returncode == 0 and inback.returncode == 0, inback.stderr
    a, b = weights(tmp_path / "runs" / "plainopt"), weights(tmp_path / "runs" / "inback")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_optimizer_in_backward_refuses_accumulation_and_clipping(tmp_path):
    config = tiny_config(name="bad", techniques=["optimizer_in_backward"])
    result, _ = train(tmp_path, config, "train.max_grad_norm=1.0")
    assert result.returncode == 2 and "cannot accumulate or clip" in result.stderr


def sgd_config(name: str, lr: float = 0.5, **train) -> dict:
    config = tiny_config(name=name, optimizer={"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0})
    config["scheduler"] = {"name": "constant", "warmup_steps": 0}
    config["train"] = {**config["train"], "max_grad_norm": None, **train}
    return config


def test_gradient_clipping_bounds_the_update(tmp_path):
    # One SGD step from the same start, with and without clipping: w_free - w_clipped = lr (1 - c/|g|) g,
    # so |w_free - w_clipped| = lr (|g| - c), with |g| the norm before clipping that the run logs.
    clip, lr = 0.05, 0.5
    free = train_run(tmp_path, sgd_config("free", lr, max_steps=1, log_every="1st"))
    clipped = train_run(tmp_path, sgd_config("clipped", lr, max_steps=1, log_every="1st", max_grad_norm=clip))
    norm = next(line["train/grad_norm"] for line in read_jsonl(clipped / "metrics.jsonl") if "train/grad_norm" in line)
    assert norm > 4 * clip  # the bound is active
    a, b = load_file(free / "model.safetensors"), load_file(clipped / "model.safetensors")
    moved = math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a))
    assert math.isclose(moved, lr * (norm - clip), rel_tol=1e-3), (moved, lr * (norm - clip))


def test_accumulation_averages_gradients_under_plain_sgd(tmp_path):
    # SGD's step scales with the gradient, so summing micro-batch gradients would double this step.
    data = {"name": "synthetic", "num_samples": 640, "num_features": 16, "batch_size": 64, "drop_last": True}
    big = train_run(tmp_path, {**sgd_config("big", 0.2, epochs=1), "data": data})
    small_config = {**sgd_config("small", 0.2, epochs=1, grad_accum_steps=2), "data": {**data, "batch_size": 32}}
    small = train_run(tmp_path, small_config)
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
    run = train_run(tmp_path, config)
    losses = [line["val/loss"] for line in read_jsonl(run / "metrics.jsonl") if "val/loss" in line]
    assert losses == sorted(losses, reverse=True)  # the premise: falling
    done = summary(run)
    assert (done["status"], done["steps"]) == (status, steps)


def test_ema_weights_are_what_evaluation_and_model_safetensors_use(tmp_path):
    config = tiny_config(name="ema", techniques=[{"name": "ema", "decay": 0.9}])
    run = train_run(tmp_path, config)
    raw = load_file(sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors")
    saved = load_file(run / "model.safetensors")
    assert any(not torch.equal(raw[k], saved[k]) for k in saved)  # the average, not the live weights
    # `mlrun eval` evaluates model.safetensors; the run's own final evaluation must give the same figures.
    evaluated = run_cli("eval", run, "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads(evaluated.stdout)["metrics"]
    final = summary(run)["final"]
    assert math.isclose(figures["val/loss"], final["val/loss"], rel_tol=1e-5), (figures, final)
    # A checkpoint holds the live weights, not the average training evaluated: said, not silently different.
    latest = run_cli("eval", run, "--checkpoint", "latest", cwd=tmp_path)
    assert latest.returncode == 0 and "holds the raw weights; training evaluated the EMA average" in latest.stderr
    assert "raw weights" not in evaluated.stderr


def test_time_in_trackers_is_no_training_time(tmp_path):
    """An unanswering MLflow server made 5 s of training read 53 s (108 instead of ~1000 samples/s)."""
    config = tiny_config(name="slowtracked", tracking=[{"name": "tests.fixtures:slow_tracker", "start_s": 1.5}])
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    done = summary(run)
    logs = sum(1 for line in read_jsonl(run / "metrics.jsonl"))  # one tracker call each, 0.1 s
    slept = 1.5 + 0.1 * logs
    assert done["wall_time_s"] - done["train_time_s"] >= slept  # the tracker's time is paused out
