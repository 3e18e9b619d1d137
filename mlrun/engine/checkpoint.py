"""Checkpoints: `checkpoints/step-<8 digits>/`, written under a temporary name and renamed when complete.

A directory named `step-*` is therefore always a whole checkpoint; a crash mid-write leaves only
a `.tmp-*` folder, which resume ignores and the next save clears. Each checkpoint also lists its
files' sizes (`files.json`), so one truncated later (a full disk, an interrupted copy) is passed
over by `--resume auto` for the newest complete one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from accelerate import Accelerator

from mlrun.errors import UsageError
from mlrun.models.weights_file import share_like_umask

CHECKPOINTS = "checkpoints"
FILE_SIZES = "files.json"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, keep: int) -> Path:
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        for stale in final.parent.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, scaler, every RNG, registered objects
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        for weights in tmp.rglob("*.safetensors"):  # Accelerate writes them 0600 (safetensors' default)
            share_like_umask(weights)
        _record_sizes(tmp)
        _fsync_tree(tmp)
        os.replace(tmp, final)  # atomic: the checkpoint appears complete or not at all
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def _record_sizes(folder: Path) -> None:
    sizes = {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}
    (folder / FILE_SIZES).write_text(json.dumps(sizes, indent=1) + "\n")


def damage(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be whole (a missing or truncated file), or None when it looks whole.

    Checkpoints written before `files.json` existed are trusted as they are.
    """
    listing = checkpoint / FILE_SIZES
    if not listing.is_file():
        return None
    try:
        sizes = json.loads(listing.read_text())
    except ValueError:
        return f"{FILE_SIZES} is unreadable"
    for name, size in sizes.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes of {size} (truncated)"
    return None


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to continue from: `auto` (the newest whole one, if any), `never`, or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        for checkpoint in reversed(found):
            problem = damage(checkpoint)
            if problem is None:
                return checkpoint
            print(f"mlrun: warning: skipping checkpoint {checkpoint}: {problem}", file=sys.stderr, flush=True)
        if found:  # never fall through to a fresh start, which would clear the run directory
            raise UsageError(
                f"every checkpoint of '{run_dir}' is damaged (see the warnings above); "
                "pass --overwrite to start the run over"
            )
        return None
    path = Path(resume)
    if not (path.is_dir() and (_NAME.match(path.name) or (path / "random_states_0.pkl").exists())):
        raise UsageError(
            f"--resume: '{resume}' is not a checkpoint folder (expected .../checkpoints/step-XXXXXXXX); "
            "use auto, never or a checkpoint path"
        )
    problem = damage(path)
    if problem is not None:
        raise UsageError(f"--resume: checkpoint '{path}' is damaged: {problem}; pass an older checkpoint or auto")
    return path
