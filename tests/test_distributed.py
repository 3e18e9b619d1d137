"""Two CPU processes over gloo (torch.distributed.run): data-parallel equivalence and exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli, tiny_config, write_config

pytestmark = pytest.mark.e2e  # torchrun: several processes


def free_port() -> int:
    """A port nobody listens on now: every launch gets its own rendezvous (no clash with a previous one)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(folder: Path, *args, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """`mlrun ARGS` on `processes` CPU processes (torch.distributed.run over gloo), or as one process."""
    prefix = [sys.executable]
    if processes > 1:
        prefix += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port())]
    # CPU processes even on a GPU machine: two ranks cannot share one GPU (tests/test_gpu.py covers GPUs).
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [*prefix, "-m", "mlrun", *map(str, args)]
    # mlrun.cli._exit_before_finalization ends a rank that finished well before Python's teardown, where
    # gloo's threads used to abort about 1 launch in 50-100 ("terminate called without an active
    # exception"; 0 in 230 since): a launch that aborts again fails its test.
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout, env=env)


def torchrun(config: dict, folder: Path, *args: str) -> subprocess.CompletedProcess:
    return launch(folder, "train", write_config(folder, config, f"{config['name']}.yaml"), *args)


def single(config: dict, folder: Path) -> subprocess.CompletedProcess:
    """`mlrun train` as one process: in this one (tests/cli_runner.py), as only the torchrun launches need their own."""
    path = write_config(folder, config, f"{config['name']}.yaml")
    return run_cli("train", path, cwd=folder, subprocess=False)


def test_two_processes_with_batch_b_match_one_with_batch_2b(tmp_path):
    two = tiny_config(name="two")  # 512 training samples: 16 batches of 32, dealt to 2 processes
    one = tiny_config(name="one", data={**two["data"], "batch_size": 64})
    assert torchrun(two, tmp_path).returncode == 0
    assert single(one, tmp_path).returncode == 0
    a, b = (
        load_file(tmp_path / "runs" / "one" / "model.safetensors"),
        load_file(tmp_path / "runs" / "two" / "model.safetensors"),
    )
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    manifest = json.loads((tmp_path / "runs" / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["effective_batch_size"] == 64
    final_two = json.loads((tmp_path / "runs" / "two" / "summary.json").read_text())["final"]
    final_one = json.loads((tmp_path / "runs" / "one" / "summary.json").read_text())["final"]
    assert final_two["val/accuracy"] == final_one["val/accuracy"]  # every validation sample counted once


def test_two_processes_resume_after_sigkill_bit_identically(tmp_path):
    def config(name: str, **model) -> dict:
        c = tiny_config(name=name, model={"name": "tests.fixtures:probe_mlp", **model})  # dropout on
        # 512 samples in batches of 24: 22 batches, the last of 8, filled for the processes with samples of
        # the epoch's start by mlrun's sampler (also when the pass begins mid-epoch, as a resumed one does).
        c["data"] = {**c["data"], "batch_size": 24}
        c["train"] = {**c["train"], "checkpoint_every": "3st"}  # 11 steps an epoch: mid-epoch checkpoints
        return c

    assert torchrun(config("straight"), tmp_path).returncode == 0
    assert torchrun(config("resumed", kill_at=14), tmp_path).returncode != 0  # rank 0 dies by SIGKILL
    resumed = torchrun(config("resumed"), tmp_path, "--allow-config-change")  # kill_at differs
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at step 12" in resumed.stdout
    a = load_file(tmp_path / "runs" / "straight" / "model.safetensors")
    b = load_file(tmp_path / "runs" / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tune_trials_train_on_two_processes_with_one_study(tmp_path):
    from tests.test_tune import trials_csv, tune_config

    path = tune_config(tmp_path, trials=3)
    result = launch(tmp_path, "tune", path, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('"study": "study"') == 1  # only rank 0 reports
    assert len(trials_csv(tmp_path)) == 3
    manifest = json.loads((tmp_path / "runs" / "study" / "tune" / "trial-0000" / "manifest.json").read_text())
    assert manifest["world_size"] == 2


def lm_config(name: str) -> dict:
    return tiny_config(
        name=name,
        model={"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0},
        data={"name": "text_lm", "path": str(REPO / "configs" / "data" / "public_domain.txt"), "block_size": 32,
              "val_fraction": 0.1, "batch_size": 16, "eval_batch_size": 12},
        objective="causal_lm",
        metrics=["accuracy"],
        train={"max_steps": 4, "eval_every": "4st", "checkpoint_every": None},
    )  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize(
    "config",
    [
        # 128 validation samples in batches of 48 over 2 processes: the last round pads 16 + 48 rows.
        lambda: tiny_config(name="padded", data={**tiny_config()["data"], "eval_batch_size": 48}),
        lambda: lm_config("padded"),  # causal_lm: every padded row would add its block's tokens
    ],
    ids=["supervised", "causal_lm"],
)
def test_two_process_val_loss_counts_every_sample_once(tmp_path, config):
    config = config()
    config["train"] = {**config["train"], "epochs": 1, "checkpoint_every": None}
    result = torchrun(config, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "padded" / "summary.json").read_text())
    evaluated = run_cli("eval", "runs/padded", "--json", cwd=tmp_path, subprocess=False)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(evaluated.stdout)
    assert report["samples"] % (2 * config["data"]["eval_batch_size"]) != 0  # the last round is padded
    assert summary["final"]["val/loss"] == pytest.approx(report["metrics"]["val/loss"], rel=1e-5)
    assert summary["final"]["val/accuracy"] == pytest.approx(report["metrics"]["val/accuracy"], rel=1e-6)


@pytest.mark.e2e
def test_resuming_a_two_process_checkpoint_on_one_process_keeps_the_global_batch_says_so_and_records_it(tmp_path):
    config = tiny_config(name="moved")
    config["train"] = {**config["train"], "epochs": None, "max_steps": 4, "checkpoint_every": "2st"}
    assert torchrun(config, tmp_path).returncode == 0
    run = tmp_path / "runs" / "moved"
    checkpoint = run / "checkpoints" / "step-00000004"
    path = tmp_path / "moved.yaml"
    resumed = run_cli("train", path, "train.max_steps=6", "--resume", checkpoint, cwd=tmp_path, subprocess=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed on 1 process(es)" in resumed.stderr and "global batch of 64" in resumed.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["effective_batch_size"] == 64  # 1 process x batch 32 x accumulation 2
    assert manifest["allocation"]["adjusted_on_resume"]["checkpoint"]["processes"] == 2
