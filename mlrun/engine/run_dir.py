"""The run directory's records: config.yaml, manifest.json, summary.json (DESIGN §3)."""

from __future__ import annotations

import json
import os
import pickle
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import mlrun

SUMMARY = "summary.json"
FINISHED = ("completed", "early_stopped")
# What `mlrun train` writes at the top of a run folder and rebuilds on a restart. The folder is shared
# (DESIGN §3): lr_find/, tune/, profile/, compress/, export/ and a user's own files are never removed.
TRAIN_OUTPUTS = (
    "checkpoints",
    "config.yaml",
    "manifest.json",
    "metrics.jsonl",
    "summary.json",
    "preprocessing.pkl",
    "preprocessing.json",
    "example_inputs.safetensors",
    "model.safetensors",
    "best.safetensors",
    "tensorboard",
    # A hosted tracker's record of its run id: a restart starts a new tracked run. The offline
    # stores (mlruns/, wandb/) keep the earlier tracked runs' history. mlflow_run.json stays: the
    # restart's tracker ends the run it names if an attempt killed before any checkpoint left it running.
    "hosted_run.json",
    "wandb_run.json",
)
# Records of commands whose folder is not a training run: training into it would replace their results.
NOT_A_RUN = {"stage.json": "a compress stage", "compress.json": "a compress folder", "export.json": "an export"}


def check_writable(folder: Path) -> None:
    """Exit 2 naming `folder` when it cannot be created or written (a folder created to check is removed)."""
    from mlrun.errors import UsageError

    existed = folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".mlrun-write-test-{os.getpid()}"  # each process of a launch checks at once
        probe.write_text("")
        probe.unlink()
        # Under torchrun another process may be writing its probe in the folder (the run creates it anyway).
        if not existed and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            folder.rmdir()
    except OSError as exc:
        raise UsageError(
            f"output_dir: cannot write '{folder}' ({exc.strerror or exc}); set output_dir=... to a writable folder"
        ) from None


def train_outputs(run_dir: Path) -> list[Path]:
    """The entries of `run_dir` that `mlrun train` wrote (or would write) and may replace on a restart."""
    return [run_dir / name for name in TRAIN_OUTPUTS if (run_dir / name).exists()]


def check_trainable(run_dir: Path, overwrite: bool) -> None:
    """Exit 2 when training into `run_dir` would replace what another command or the user put there.

    A folder holding train's file names without manifest.json (which train writes at every start)
    was not made by `mlrun train`: its files are replaced only with --overwrite.
    """
    from mlrun.errors import UsageError

    for inside in (
        run_dir,
        *run_dir.parents,
    ):  # runs/a/checkpoints, runs/a/checkpoints/x: an --overwrite of a clears it
        if inside.name in TRAIN_OUTPUTS and (inside.parent / "manifest.json").is_file():
            raise UsageError(
                f"'{run_dir}' is inside the {inside.name} of the run '{inside.parent}', which that run replaces: "
                "choose another name=... or output_dir=..."
            )
    for record, what in NOT_A_RUN.items():
        if (run_dir / record).is_file():
            raise UsageError(
                f"'{run_dir}' is {what} folder ({record}), not a training run: training into it would replace "
                f"its weights and records. Train into another folder (output_dir=... name=...); to start from "
                f"its weights, add init_from={{run: {run_dir}}}"
            )
    if overwrite or (run_dir / "manifest.json").is_file():
        return
    found = [path.name for path in train_outputs(run_dir)]
    if found:
        raise UsageError(
            f"'{run_dir}' holds {', '.join(found)} that mlrun train did not write (no manifest.json). "
            "Choose another name=... or output_dir=..., or pass --overwrite to replace them "
            "(other files and folders there are kept)"
        )


def clear_train_outputs(run_dir: Path) -> None:
    """Remove what an earlier start of `mlrun train` wrote in `run_dir`; everything else stays."""
    import shutil

    for path in train_outputs(run_dir):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk: leave the old file (if any), never a 0-byte temporary one
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:  # a damaged record is treated as absent, never as a crash
        return None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / SUMMARY)


def write_config(run_dir: Path, config_dump: dict[str, Any]) -> None:
    header = "# Resolved config of this run: `mlrun train` on this file reruns it.\n"
    (run_dir / "config.yaml").write_text(header + yaml.safe_dump(config_dump, sort_keys=False))


def write_fitted_transform(run_dir: Path, transform: Any) -> None:
    """preprocessing.pkl: the preprocessing fitted on the training split (tabular data), for eval and export."""
    if transform is not None:
        with open(run_dir / "preprocessing.pkl", "wb") as file:
            pickle.dump(transform, file)


def manifest(world_size: int, device: str, precision: str, effective_batch: int, fingerprints: dict) -> dict[str, Any]:
    import accelerate
    import torch

    from mlrun.data.bundle import FINGERPRINT_VERSION

    return {
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "mlrun": mlrun.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "accelerate": accelerate.__version__,
        },
        "git_sha": _git_sha(),
        "git_dirty": _git_dirty(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device,
        "world_size": world_size,
        "precision": precision,
        "effective_batch_size": effective_batch,
        "data_fingerprint": fingerprints,
        "data_fingerprint_version": FINGERPRINT_VERSION,
    }


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (untracked files, like the run folders, do not count)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def peak_memory_measure(device_type: str) -> str:
    """What summary.json's peak_memory_bytes counts, since it differs from `mlrun profile`'s on CPU."""
    if device_type == "cuda":
        return "cuda_max_allocated: the CUDA allocator's peak of live tensors, as mlrun profile measures it"
    return (
        "cpu_max_resident_set: the process's peak resident memory (Python, libraries and allocator caches "
        "included); mlrun profile's measured_peak counts live tensor bytes only"
    )


def peak_memory_bytes(device_type: str) -> int:
    """Peak memory of the run: CUDA allocator peak on GPU, the process's max resident set on CPU."""
    import torch

    if device_type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
