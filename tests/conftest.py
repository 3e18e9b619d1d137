"""Helpers: run the real CLI (in this process, or in a subprocess for tests marked e2e) and write small configs."""

from __future__ import annotations

import json
import os
import subprocess as _subprocess
import sys
from pathlib import Path

import pytest
import yaml

# pytest-xdist workers share the machine's cores: with torch's default (one thread per core) in each,
# n workers run n x cores threads, and the tiny models' many short ops then wait on each other's
# OpenMP spinning. Each worker gets its share, set before torch is imported (the runs it starts inherit it).
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

from tests.cli_runner import REPO, run_in_process  # noqa: E402 - after the thread count

_CUDA_VISIBLE_AT_START = os.environ.get("CUDA_VISIBLE_DEVICES")
_real_process = False  # set for each test: marked e2e, so run_cli starts `python -m mlrun`


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, subprocess: bool | None = None, **popen
) -> _subprocess.CompletedProcess:
    """`mlrun *args` in `cwd`: returncode, stdout and stderr, as `subprocess.run` returns them.

    In this process (tests/cli_runner.py) unless the test is marked e2e, `subprocess=True` is passed,
    Popen arguments are given, or the test hid a GPU this process already sees (`cpu_only`).
    """
    if subprocess is None:
        subprocess = _real_process or bool(popen) or _gpu_hidden_from_a_gpu_process()
    if not subprocess:
        return run_in_process([str(a) for a in args], Path(cwd), timeout)
    return run_cli_process(*args, cwd=cwd, timeout=timeout, **popen)


def run_cli_process(*args: str, cwd: Path, timeout: float = 300, **popen) -> _subprocess.CompletedProcess:
    """`python -m mlrun *args` in a new process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return _subprocess.run(
        [sys.executable, "-m", "mlrun", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def start_cli(*args: str, cwd: Path) -> _subprocess.Popen:
    """`python -m mlrun *args` started in a new process (a test marked e2e signals or waits on it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return _subprocess.Popen(
        [sys.executable, "-m", "mlrun", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=_subprocess.PIPE,
        stderr=_subprocess.PIPE,
        text=True,
    )


def _gpu_hidden_from_a_gpu_process() -> bool:
    """CUDA_VISIBLE_DEVICES changed (cpu_only) in a process whose torch can use CUDA: once CUDA's driver has
    started in this process it ignores the variable, and only a new process obeys it."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == _CUDA_VISIBLE_AT_START:
        return False
    import torch

    return torch.backends.cuda.is_built()


@pytest.fixture(autouse=True)
def _cli_runner(request):
    """Tests marked e2e run the CLI in real processes (signals, SIGKILL, torchrun, start-up behaviour)."""
    global _real_process
    _real_process = request.node.get_closest_marker("e2e") is not None
    yield
    _real_process = False


def needs(*packages: str) -> pytest.MarkDecorator:
    """Skip where a package is not installed, without importing it: a module-level importorskip imports
    mlflow, wandb or transformers (1-1.5 s each) in every test process that merely collects the file."""
    import importlib.util

    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


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


def train_run(folder: Path, config: dict, *args: str) -> Path:
    """`mlrun train` of `config` (written as <name>.yaml in `folder`), which must succeed; its run directory."""
    result = run_cli("train", write_config(folder, config, f"{config['name']}.yaml"), *args, cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "runs" / config["name"]


_TINY_HF_BUILT: dict[tuple[str, str], Path] = {}


def make_tiny_hf(folder: Path, kind: str, corpus: str | Path | None = None) -> Path:
    """A "pretrained" transformers model and tokenizer (scripts/make_tiny_hf.py: save_pretrained, nothing
    downloaded) copied into `folder`. Each (kind, corpus) is built once per test process, in it: the script
    in its own process cost ~7 s of transformers start-up per test."""
    import importlib.util
    import shutil
    import tempfile

    corpus = Path(corpus or REPO / "configs/data/digits_ascii.jsonl")
    key = (kind, str(corpus))
    if key not in _TINY_HF_BUILT:
        spec = importlib.util.spec_from_file_location("make_tiny_hf", REPO / "scripts/make_tiny_hf.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        built = Path(tempfile.mkdtemp(prefix=f"mlrun-tiny-{kind}-"))
        script.write_tiny_hf(built, kind, corpus)
        _TINY_HF_BUILT[key] = built
    shutil.copytree(_TINY_HF_BUILT[key], folder)
    return folder


def pytest_sessionfinish(session) -> None:
    import shutil

    for built in _TINY_HF_BUILT.values():
        shutil.rmtree(built, ignore_errors=True)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


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
    """The CLI runs of this test see no GPU: it checks CPU behaviour, also on a GPU machine."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
