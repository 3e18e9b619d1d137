"""scripts/slurm/train.sbatch's several-process path without SLURM: `srun` and `scontrol` are stand-ins
(srun starts its command as this job's task; scontrol names this host and records a requeue), so the
script's own signal handling is what is tested, on every machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_config, write_config
from tests.test_distributed import free_port

pytestmark = pytest.mark.e2e  # torchrun under the script, signalled as SLURM would

SRUN = """#!/bin/bash
# srun's own options, then the task's command, started in srun's place (it passes signals on to the task).
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""
SCONTROL = """#!/bin/bash
case "$1" in
  show) echo 127.0.0.1 ;;
  requeue) echo "$2" >> "$REQUEUED" ;;
esac
"""


def stand_ins(folder: Path) -> Path:
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_usr1_before_the_time_limit_checkpoints_every_process_and_requeues(tmp_path):
    config = tiny_config(name="pre", model={"name": "tests.fixtures:slow_mlp", "sleep_s": 0.02})
    config["train"] = {**config["train"], "epochs": 50, "checkpoint_every": "5st"}
    path = write_config(tmp_path, config)
    env = {
        **os.environ,
        "PATH": f"{stand_ins(tmp_path)}:{os.environ['PATH']}",
        "CONFIG": str(path),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "NPROC_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_JOB_ID": "4242",
        "RDZV_PORT": str(free_port()),
        "REQUEUED": str(tmp_path / "requeued"),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    job = subprocess.Popen(
        ["bash", str(REPO / "scripts/slurm/train.sbatch")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    checkpoints = tmp_path / "runs/pre/checkpoints"
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints.is_dir() and any(checkpoints.glob("step-*"))):
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0][-3000:]
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends the batch script
        output, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert "checkpoint saved at step" in output, output[-3000:]
    # Both processes got the signal and stopped alike; the first one says so, once.
    assert output.count("SIGTERM received") == 1 and output.count("stopped by signal") == 1, output[-3000:]
    assert (tmp_path / "requeued").read_text().split() == ["4242"], output[-3000:]
    summary = json.loads((tmp_path / "runs/pre/summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] < 800, summary
    assert (checkpoints / f"step-{summary['steps']:08d}").is_dir()  # the stop's own checkpoint
    leftover = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True).stdout.split()
    assert not leftover, f"workers still running: {leftover}"
