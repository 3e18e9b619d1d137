"""Pipeline parallelism on 2 CPU processes over gloo: the weights after training match one process.

torch.distributed.pipelining is alpha and has hung on gloo: every launch runs under a timeout
(subprocess.run's; a hang fails the test instead of stalling the suite).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli, tiny_config, write_config
from tests.test_distributed import launch

pytestmark = pytest.mark.e2e  # torchrun: several processes

TIMEOUT_S = 240


def config(name: str, batch_size: int, **distributed) -> dict:
    c = tiny_config(name=name, model={"name": "mlp", "hidden_sizes": [32, 32, 32], "dropout": 0.0})
    c["data"] = {**c["data"], "batch_size": batch_size, "drop_last": True}
    c["train"] = {**c["train"], "epochs": 2, "max_grad_norm": 1.0}
    c["distributed"] = distributed
    return c


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stage_pipeline_matches_one_process(tmp_path, schedule):
    pipe = config("pipe", 32, strategy="pipeline", pipeline_schedule=schedule, pipeline_microbatches=4)
    one = config("one", 64)  # the pipeline's global batch: 2 processes x 32
    result = launch(tmp_path, "train", write_config(tmp_path, pipe, "pipe.yaml"), timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    # The one-process reference runs in this process (tests/cli_runner.py): only torchrun needs its own.
    assert run_cli("train", write_config(tmp_path, one, "one.yaml"), cwd=tmp_path, subprocess=False).returncode == 0
    a = load_file(tmp_path / "runs" / "one" / "model.safetensors")
    b = load_file(tmp_path / "runs" / "pipe" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), max((a[k] - b[k]).abs().max() for k in a)
    summary = json.loads((tmp_path / "runs" / "pipe" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 16  # 2 epochs of 512 // 64
    reference = json.loads((tmp_path / "runs" / "one" / "summary.json").read_text())
    assert summary["final"]["val/accuracy"] == reference["final"]["val/accuracy"]


def test_pipeline_without_drop_last_says_why(tmp_path):
    c = config("pipe", 32, strategy="pipeline")
    c["data"]["drop_last"] = False
    result = launch(tmp_path, "train", write_config(tmp_path, c), timeout=TIMEOUT_S)
    # Each process exits 2 with the message; torchrun itself then reports 1.
    assert result.returncode != 0 and "distributed.strategy: pipeline does not support data.drop_last" in result.stderr
