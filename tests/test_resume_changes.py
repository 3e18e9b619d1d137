"""Continuing a run after a change, through the real CLI: callbacks by name, config diffs, damaged runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import read_jsonl, run_cli, tiny_config, write_config


def train(tmp_path: Path, config: dict, *args: str):
    path = write_config(tmp_path, config, f"{config['name']}.yaml")
    return run_cli("train", path, *args, cwd=tmp_path), tmp_path / "runs" / config["name"]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def early_stopping_config(name: str, patience: int = 1) -> dict:
    config = tiny_config(name=name)
    # min_delta 10: no evaluation ever counts as an improvement, so it stops after patience + 1 evaluations.
    stop = {"monitor": "val/loss", "mode": "min", "patience": patience, "min_delta": 10.0}
    config["train"] = {**config["train"], "epochs": 6, "early_stopping": stop}
    return config


def test_early_stopped_run_extends_without_early_stopping_and_with_ema(tmp_path):
    result, run = train(tmp_path, early_stopping_config("ext"))
    assert result.returncode == 0, result.stderr
    stopped = read(run / "summary.json")
    assert stopped["status"] == "early_stopped" and stopped["steps"] == 32
    checkpoint = run / "checkpoints" / "step-00000032"
    extended, _ = train(
        tmp_path,
        early_stopping_config("ext"),
        "train.early_stopping=null",
        "train.epochs=4",
        "techniques=[ema]",
        "--resume",
        str(checkpoint),
    )
    assert extended.returncode == 0, extended.stderr
    done = read(run / "summary.json")
    assert done["status"] == "completed" and done["steps"] == 64
    assert "starting fresh: ema" in extended.stderr and "no longer used: early_stopping" in extended.stderr
    changes = read(run / "manifest.json")["config_changes"]
    assert changes[-1]["step"] == 32 and "techniques" in changes[-1]["changes"]
    assert "train.early_stopping" in changes[-1]["changes"]


def test_changed_patience_restarts_the_early_stopping_count(tmp_path):
    result, run = train(tmp_path, early_stopping_config("pat", patience=1))
    assert result.returncode == 0 and read(run / "summary.json")["steps"] == 32
    extended, _ = train(
        tmp_path,
        early_stopping_config("pat", patience=2),
        "--resume",
        str(run / "checkpoints" / "step-00000032"),
    )
    assert extended.returncode == 0, extended.stderr
    # The restored count (1 bad evaluation) measured against patience 1 would stop at the next
    # evaluation (step 48); counted afresh it takes two more bad evaluations.
    done = read(run / "summary.json")
    assert done["status"] == "early_stopped" and done["steps"] == 64


def test_a_finished_run_extended_starts_its_next_epoch_without_evaluating_its_last_step_again(tmp_path):
    """A run that ends at an epoch's last step has ended that epoch: extended, it trains the next one, and
    the step it ended at is evaluated once (a second evaluation counted as a bad one for early stopping)."""
    config = early_stopping_config("more", patience=2)
    config["train"]["epochs"] = 2
    result, run = train(tmp_path, config)
    assert result.returncode == 0 and read(run / "summary.json")["status"] == "completed", result.stderr
    extended, _ = train(tmp_path, config, "train.epochs=4", "--resume", str(run / "checkpoints" / "step-00000032"))
    assert extended.returncode == 0, extended.stderr
    done = read(run / "summary.json")
    assert done["status"] == "early_stopped" and done["steps"] == 48, done  # bad evaluations at 32 and 48
    evaluated = [row["step"] for row in read_jsonl(run / "metrics.jsonl") if "val/loss" in row]
    assert evaluated == [16, 32, 48], evaluated


def test_an_extension_killed_before_its_end_goes_on_from_its_newest_whole_checkpoint(tmp_path):
    """A requeued job reruns the extension's command as it was, `--resume` of the finished run's last
    checkpoint included (since rotated away); summary.json still says the first training finished. It goes
    on from the extension's newest whole checkpoint; `train` without --resume does the same."""
    config = tiny_config(name="ext")  # 16 steps an epoch, a checkpoint at each epoch's end
    config["train"] = {**config["train"], "keep_checkpoints": 2}
    assert train(tmp_path, config)[0].returncode == 0
    armed = tmp_path / "armed"
    armed.touch()
    config["techniques"] = [{"name": "tests.fixtures:kill_at_step", "step": 90, "armed_file": str(armed)}]
    path = write_config(tmp_path, config, "ext.yaml")
    command = (
        "train",
        path,
        "train.epochs=6",
        "--allow-config-change",
        "--resume",
        "runs/ext/checkpoints/step-00000048",
    )
    killed = run_cli(*command, cwd=tmp_path, subprocess=True)
    assert killed.returncode != 0 and not armed.exists(), killed.stderr
    run = tmp_path / "runs/ext"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000064", "step-00000080"]
    (run / "checkpoints/step-00000080/model.safetensors").write_bytes(b"cut short")  # the kill hit its write
    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed at step 64" in again.stdout, again.stdout  # the damaged newest skipped
    assert read(run / "summary.json")["steps"] == 96
    rewind = run_cli(*command[:-1], "runs/ext/checkpoints/step-00000080", "train.epochs=7", cwd=tmp_path)
    assert "resumed at step 80" in rewind.stdout, rewind.stderr  # an older checkpoint named on purpose


def interrupted_run(tmp_path: Path, name: str, keep_newest: bool = False, data: dict | None = None) -> Path:
    """A run as a crash in its second epoch leaves it: a checkpoint at step 16, no summary.json. `data`
    replaces the synthetic data section (its training split must make 16 batches of 32)."""
    config = tiny_config(name=name, **({"data": data} if data else {}))
    config["train"] = {**config["train"], "epochs": 2}
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    (run / "summary.json").unlink()
    if not keep_newest:
        shutil.rmtree(run / "checkpoints" / "step-00000032")
    (run / "model.safetensors").unlink()
    return run


def test_auto_resume_with_a_changed_config_is_refused_then_accepted_and_recorded(tmp_path):
    run = interrupted_run(tmp_path, "lr")
    before = (run / "config.yaml").read_text()
    config = tiny_config(name="lr")
    config["train"] = {**config["train"], "epochs": 2}
    refused, _ = train(tmp_path, config, "optimizer.lr=0.001")
    assert refused.returncode == 2
    assert "optimizer.lr: 0.01 -> 0.001" in refused.stderr and "--allow-config-change" in refused.stderr
    assert (run / "config.yaml").read_text() == before and not (run / "summary.json").exists()
    accepted, _ = train(tmp_path, config, "optimizer.lr=0.001", "--allow-config-change")
    assert accepted.returncode == 0, accepted.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["lr"] == 0.001
    assert read(run / "manifest.json")["config_changes"] == [{"step": 16, "changes": {"optimizer.lr": [0.01, 0.001]}}]
    # The new rate took effect at the resume: the first log after step 16 is under the new peak.
    lrs = [line["train/lr"] for line in read_jsonl(run / "metrics.jsonl") if "train/lr" in line and line["step"] > 16]
    assert lrs and max(lrs) <= 0.001


def test_a_run_started_from_another_runs_checkpoint_records_what_differs_from_that_run(tmp_path):
    """A new name with --resume runs/a/checkpoints/step-N recorded no config changes (a user trial): the
    comparison read the new run's config.yaml, which does not exist yet."""
    result, _ = train(tmp_path, tiny_config(name="a"))
    assert result.returncode == 0, result.stderr
    config = tiny_config(name="b")
    config["train"] = {**config["train"], "epochs": 4}
    forked, run = train(tmp_path, config, "--resume", "runs/a/checkpoints/step-00000032")
    assert forked.returncode == 0, forked.stderr
    recorded = read(run / "manifest.json")["config_changes"]
    assert recorded == [{"step": 32, "changes": {"name": ["a", "b"], "train.epochs": [3, 4]}}]
    assert (run / "preprocessing.pkl").is_file() == (tmp_path / "runs/a/preprocessing.pkl").is_file()


def csv_shard(path: Path, seed: int, rows: int = 320) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).round(4)
    lines = ["f0,f1,f2,f3,label", *(",".join(map(str, [*r, int(r[0] > 0)])) for r in x)]
    path.write_text("\n".join(lines) + "\n")


def test_auto_resume_on_other_data_is_refused_then_accepted_and_recorded(tmp_path):
    """The same config reading other data (a shard added to its glob) changes the epoch under the checkpoint."""
    (tmp_path / "shards").mkdir()
    for seed in (0, 1):
        csv_shard(tmp_path / "shards" / f"part-{seed}.csv", seed)
    data = {"name": "csv", "path": "shards/*.csv", "target": "label", "batch_size": 32}
    run = interrupted_run(tmp_path, "grown", data=data)
    before = read(run / "manifest.json")["data_fingerprint"]
    csv_shard(tmp_path / "shards" / "part-2.csv", 2)
    config = tiny_config(name="grown", data=data)
    config["train"] = {**config["train"], "epochs": 2}
    refused, _ = train(tmp_path, config)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"data_fingerprint.train: {before['train']} -> " in refused.stderr
    assert "--allow-config-change" in refused.stderr
    assert read(run / "manifest.json")["data_fingerprint"] == before and not (run / "summary.json").exists()
    accepted, _ = train(tmp_path, config, "--allow-config-change")
    assert accepted.returncode == 0, accepted.stderr
    after = read(run / "manifest.json")
    assert after["data_fingerprint"]["train"] != before["train"]
    expected = {f"data_fingerprint.{s}": [before[s], after["data_fingerprint"][s]] for s in ("train", "val")}
    assert after["config_changes"] == [{"step": 16, "changes": expected}]


def test_a_run_recorded_before_fingerprints_were_compared_resumes_on_its_data(tmp_path):
    """A run whose manifest holds fingerprints of an older kind (absolute paths, file times) is not refused
    as other data: nothing comparable was recorded (a review)."""
    run = interrupted_run(tmp_path, "older")
    manifest = read(run / "manifest.json")
    manifest["data_fingerprint"] = {"train": "0123456789abcdef", "val": "fedcba9876543210"}
    del manifest["data_fingerprint_version"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    config = tiny_config(name="older")
    config["train"] = {**config["train"], "epochs": 2}
    resumed, _ = train(tmp_path, config)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 16" in resumed.stdout


def test_a_model_shape_change_is_named_and_the_finished_run_stays_intact(tmp_path):
    result, run = train(tmp_path, tiny_config(name="fin"), "train.epochs=1")
    assert result.returncode == 0
    records = {name: (run / name).read_bytes() for name in ("summary.json", "config.yaml", "manifest.json")}
    checkpoint = run / "checkpoints" / "step-00000016"
    failed, _ = train(tmp_path, tiny_config(name="fin"), "model.hidden_sizes=[64]", "--resume", str(checkpoint))
    assert failed.returncode == 2, failed.stderr
    assert "model.hidden_sizes" in failed.stderr and "size mismatch" in failed.stderr
    assert "Traceback" not in failed.stderr and "Console" not in failed.stderr
    other = run_cli("train", tmp_path / "fin.yaml", "optimizer.name=sgd", "--resume", str(checkpoint), cwd=tmp_path)
    assert other.returncode == 2 and "optimizer.name: adamw -> sgd cannot apply" in other.stderr
    assert {name: (run / name).read_bytes() for name in records} == records


def test_truncated_newest_checkpoint_is_passed_over_with_a_warning(tmp_path):
    run = interrupted_run(tmp_path, "trunc", keep_newest=True)
    # The step-32 checkpoint's weights file cut short after it was written (a full disk, a bad copy).
    weights = run / "checkpoints" / "step-00000032" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = tiny_config(name="trunc")
    config["train"] = {**config["train"], "epochs": 2}
    resumed, _ = train(tmp_path, config)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping checkpoint" in resumed.stderr and "truncated" in resumed.stderr
    assert "resumed at step 16" in resumed.stdout


@pytest.mark.parametrize("harm", ["zeroed", "deleted"])
def test_newest_checkpoint_without_a_readable_rng_file_is_passed_over_or_refused_by_name(tmp_path, harm):
    # Accelerate's load_state skips such a file with an info-level line, and the resume would not be exact.
    run = interrupted_run(tmp_path, f"rng-{harm}", keep_newest=True)
    newest = run / "checkpoints" / "step-00000032"
    states = newest / "random_states_0.pkl"
    if harm == "zeroed":  # damaged in place: the same size, so files.json's sizes still match
        states.write_bytes(bytes(64) + states.read_bytes()[64:])
    else:  # deleted with the list of sizes that would have missed it
        states.unlink()
        (newest / "files.json").unlink()
    config = tiny_config(name=f"rng-{harm}")
    config["train"] = {**config["train"], "epochs": 2}
    named, _ = train(tmp_path, config, "--resume", str(newest))
    assert named.returncode == 2, named.stderr
    assert "random_states_0.pkl is" in named.stderr and "Traceback" not in named.stderr
    resumed, _ = train(tmp_path, config)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping checkpoint" in resumed.stderr and "random_states_0.pkl" in resumed.stderr
    assert "resumed at step 16" in resumed.stdout


def test_unreadable_optimizer_state_names_the_file_and_the_checkpoint_before_it(tmp_path):
    run = interrupted_run(tmp_path, "opt", keep_newest=True)
    optimizer = run / "checkpoints" / "step-00000032" / "optimizer.bin"
    optimizer.write_bytes(bytes(64) + optimizer.read_bytes()[64:])  # damaged in place, its size unchanged
    config = tiny_config(name="opt")
    config["train"] = {**config["train"], "epochs": 2}
    failed, _ = train(tmp_path, config)
    assert failed.returncode == 2, failed.stderr
    assert "optimizer.bin is damaged" in failed.stderr
    assert "--resume runs/opt/checkpoints/step-00000016" in failed.stderr  # how to go on
    # Not torch's advice for a file it refused to unpickle: running a damaged file's bytes mends nothing.
    assert "weights_only" not in failed.stderr and "arbitrary code" not in failed.stderr
    assert "Traceback" not in failed.stderr


def test_wall_time_of_a_resumed_run_counts_every_attempt_like_its_training_time(tmp_path):
    # Each training forward sleeps: 32 steps take at least 32 x sleep_s of wall time, over two attempts.
    sleep_s = 0.05
    config = tiny_config(name="wall", model={"name": "tests.fixtures:slow_mlp", "sleep_s": sleep_s})
    config["train"] = {**config["train"], "epochs": 2}
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    (run / "summary.json").unlink()  # as a kill after the step-16 checkpoint leaves it
    shutil.rmtree(run / "checkpoints" / "step-00000032")
    resumed, _ = train(tmp_path, config)
    assert "resumed at step 16" in resumed.stdout, resumed.stderr
    done = read(run / "summary.json")
    assert done["wall_time_s"] >= done["train_time_s"], done  # mlrun compare shows it beside unbroken runs
    assert done["wall_time_s"] >= 32 * sleep_s, done


def test_a_checkpoint_from_before_wall_time_was_kept_resumes_with_its_training_time_as_wall_time():
    from mlrun.engine.state import TrainState

    state = TrainState()
    state.load_state_dict({"step": 16, "train_time_s": 5.0})  # no wall_time_s in it
    assert state.wall_time_s == 5.0  # a lower bound: never a wall time shorter than the training in it


def test_a_resume_keeps_the_global_batch_and_goes_on_mid_epoch_with_another_split_of_it(tmp_path):
    """A batch size changed on resume was 'taken as is': the epoch went back (1.96 -> 1.6), part of it was
    trained twice and the run ended past train.epochs (4.49 of 4), while another split of the same global
    batch resumed at the wrong position in the epoch."""
    config = tiny_config(name="split")
    config["train"] = {**config["train"], "epochs": 2, "checkpoint_every": "5st", "keep_checkpoints": 10}
    straight, run = train(tmp_path, config)
    assert straight.returncode == 0, straight.stderr
    whole = {k: v.clone() for k, v in load_file(run / "model.safetensors").items()}
    for name in ("summary.json", "model.safetensors"):
        (run / name).unlink()
    for later in ("step-00000015", "step-00000020", "step-00000025", "step-00000030", "step-00000032"):
        shutil.rmtree(run / "checkpoints" / later)  # the newest left: step 10, batch 10 of 16 in epoch 0
    refused, _ = train(tmp_path, config, "data.batch_size=64", "--allow-config-change")
    assert refused.returncode == 2 and "global batch of 64, the checkpoint's was 32" in refused.stderr
    resumed, _ = train(tmp_path, config, "data.batch_size=16", "train.grad_accum_steps=2", "--allow-config-change")
    assert resumed.returncode == 0, resumed.stderr
    done = read(run / "summary.json")
    assert done["steps"] == 32 and done["epochs"] == pytest.approx(2.0)
    epochs = [line["epoch"] for line in read_jsonl(run / "metrics.jsonl")]
    assert epochs == sorted(epochs)  # never back
    split = load_file(run / "model.safetensors")
    for key, tensor in whole.items():  # the same samples in each step: equal up to float summation order
        assert np.allclose(split[key].numpy(), tensor.numpy(), atol=1e-5), key


def test_resume_from_a_rotated_away_checkpoint_lists_the_ones_kept(tmp_path):
    config = tiny_config(name="kept")
    config["train"] = {**config["train"], "epochs": 2, "keep_checkpoints": 1}
    result, _ = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    named, _ = train(tmp_path, config, "train.epochs=3", "--resume", "runs/kept/checkpoints/step-00000016")
    assert named.returncode == 2, named.stderr
    assert "'runs/kept/checkpoints/step-00000016' does not exist (removed by keep_checkpoints?)" in named.stderr
    assert "this run's checkpoints: step-00000032" in named.stderr


def test_resume_by_hand_of_a_slurm_run_drops_requeue_on_signal_without_being_refused(tmp_path):
    # scripts/slurm/train.sbatch adds train.requeue_on_signal=true; the same `mlrun train CONFIG` by hand lacks it.
    config = tiny_config(name="slurm")
    config["train"] = {**config["train"], "epochs": 2}
    result, run = train(tmp_path, config, "train.requeue_on_signal=true")
    assert result.returncode == 0, result.stderr
    (run / "summary.json").unlink()  # as a kill after the step-16 checkpoint leaves it
    shutil.rmtree(run / "checkpoints" / "step-00000032")
    resumed, _ = train(tmp_path, config)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 16" in resumed.stdout
    changes = read(run / "manifest.json")["config_changes"]
    assert changes[-1] == {"step": 16, "changes": {"train.requeue_on_signal": [True, False]}}


def test_an_interrupted_run_whose_checkpoints_were_deleted_is_not_restarted_silently(tmp_path):
    config = tiny_config(name="gone", model={"name": "tests.fixtures:probe_mlp", "nan_at": [20]})
    config["train"] = {**config["train"], "epochs": 2, "log_every": "1st"}
    failed, run = train(tmp_path, config)  # a NaN at step 20, after the step-16 checkpoint
    assert failed.returncode == 1, failed.stderr
    assert read(run / "summary.json")["last_checkpoint"] == "runs/gone/checkpoints/step-00000016"
    shutil.rmtree(run / "checkpoints" / "step-00000016")
    metrics = (run / "metrics.jsonl").read_text()
    refused, _ = train(tmp_path, config)
    assert refused.returncode == 2, refused.stderr
    assert "summary.json records a checkpoint at step 16" in refused.stderr
    assert "holds none (deleted or moved?)" in refused.stderr and "--overwrite" in refused.stderr
    assert (run / "metrics.jsonl").read_text() == metrics  # the earlier attempt's records are kept
