"""Preemption under a real one-node SLURM cluster: USR1 -> checkpoint -> requeue -> exact resume.

Starts Debian's munged, slurmctld and slurmd with scripts/slurm/local_cluster.sh; skipped when they
are not installed or the tests do not run as root. SLURM holds a requeued job about two minutes
before it may start again, so this test takes about three.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli, tiny_config, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")) or os.geteuid() != 0,
        reason="needs Debian's slurmctld, slurmd, slurm-client and munge, run as root",
    ),
]  # e2e: SLURM starts and signals the job's processes


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    script = REPO / "scripts" / "slurm" / "local_cluster.sh"
    started = subprocess.run([str(script), "start", str(state)], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"the local SLURM cluster did not start: {started.stderr[-500:]}")
    yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    subprocess.run([str(script), "stop", str(state)], timeout=60)


def job_state(env: dict, job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("JobState=")), "GONE")


def test_preempted_job_requeues_and_resumes_exactly(slurm, tmp_path):
    config = tiny_config(name="preempt", model={"name": "tests.fixtures:slow_mlp", "sleep_s": 0.03})
    config["train"] = {**config["train"], "epochs": 30, "checkpoint_every": "5st", "log_every": "1st"}
    path = write_config(tmp_path, config)
    assert run_cli("train", path, "output_dir=straight", cwd=tmp_path, subprocess=False).returncode == 0

    env = {**slurm, "CONFIG": str(path), "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={tmp_path}", str(REPO / "scripts" / "slurm" / "train.sbatch")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    job = submitted.stdout.strip().split(";")[0]
    metrics = tmp_path / "runs" / "preempt" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > 20):
        assert time.time() < deadline, "the job never started training"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)

    deadline = time.time() + 360  # SLURM's requeue delay is about 120 s
    while job_state(slurm, job) not in ("COMPLETED", "FAILED", "CANCELLED", "GONE"):
        assert time.time() < deadline, f"job {job} still {job_state(slurm, job)}"
        time.sleep(1)
    log = "".join(p.read_text() for p in tmp_path.glob("mlrun-*.out"))
    assert "requeued SLURM job" in log and "restart 1" in log and "resumed at step" in log, log[-3000:]
    summary = json.loads((tmp_path / "runs" / "preempt" / "summary.json").read_text())
    assert summary["status"] == "completed"
    a = load_file(tmp_path / "straight" / "preempt" / "model.safetensors")
    b = load_file(tmp_path / "runs" / "preempt" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_first_start_without_checkpoint_is_clean(slurm, tmp_path):
    path = write_config(tmp_path, tiny_config(name="fresh"))
    env = {**slurm, "CONFIG": str(path), "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        ["sbatch", "--parsable", "--wait", f"--chdir={tmp_path}", str(REPO / "scripts" / "slurm" / "train.sbatch")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "runs" / "fresh" / "summary.json").read_text())["status"] == "completed"
    assert "resumed" not in "".join(p.read_text() for p in tmp_path.glob("mlrun-*.out"))
