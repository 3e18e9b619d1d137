"""Helpers: run the real CLI in a subprocess and write small configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mlrun", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "mlrun", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tiny_config(**sections) -> dict:
    """A fast config on synthetic data; keyword arguments replace whole sections."""
    config = {
        "name": "tiny",
        "seed": 0,
        "output_dir": "runs",
        "model": {"name": "mlp", "hidden_sizes": [32], "dropout": 0.0},
        "data": {"name": "synthetic", "num_samples": 640, "num_features": 16, "num_classes": 4, "batch_size": 32},
        "metrics": ["accuracy"],
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "scheduler": {"name": "cosine", "warmup_steps": 5},
        "train": {"epochs": 3, "log_every": "5st", "eval_every": "1ep", "checkpoint_every": "1ep"},
        "tracking": [{"name": "console", "plain": True}],
    }
    config.update(sections)
    return config


def write_config(folder: Path, config: dict, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` skip, saying why, where torch sees no CUDA device (run them: pytest -m gpu)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture
def cpu_only(monkeypatch) -> None:
    """The CLI subprocesses of this test see no GPU: it checks CPU behaviour, also on a GPU machine."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
