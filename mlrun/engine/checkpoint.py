"""Checkpoints: `checkpoints/step-<8 digits>/`, written under a temporary name and renamed when complete.

A directory named `step-*` is therefore always a whole checkpoint; a crash mid-write leaves only
a `.tmp-*` folder, which resume ignores and the next save clears. Each checkpoint also lists its
files' sizes (`files.json`), so one truncated later (a full disk, an interrupted copy) is passed
over by `--resume auto` for the newest complete one; so is one whose RNG file is missing or
unreadable, which Accelerate's load_state would skip without a word.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

from accelerate import Accelerator

from mlrun.engine.allocation import ALLOCATION, write_allocation
from mlrun.errors import UsageError
from mlrun.models.weights_file import share_like_umask

CHECKPOINTS = "checkpoints"
FILE_SIZES = "files.json"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:08d}"


def checkpoint_step(checkpoint: Path) -> int | None:
    """The optimizer step a `step-N` checkpoint holds (None for another folder)."""
    found = _NAME.match(checkpoint.name)
    return int(found.group(1)) if found else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


class CheckpointWriter:
    """Writes `step-N` checkpoints: Accelerate's files (RNG, the loop's state; model and optimizer unless
    `dcp_state` takes them), then the model and optimizer through DCP (mlrun.engine.dcp_state).

    With an asynchronous DcpState the rename to `step-N` waits for the background write: `flush()`
    runs at the next save, at the end and on a stop signal. Until then the checkpoint is a `.tmp-*`
    folder, so a kill mid-write leaves the previous checkpoint the newest whole one.
    """

    def __init__(self, accelerator: Accelerator, run_dir: Path, keep: int, allocation, saved, dcp_state=None):
        self.accelerator, self.run_dir, self.keep, self.dcp_state = accelerator, run_dir, keep, dcp_state
        # What a checkpoint holds beyond model, optimizer, scaler and RNG (mlrun.engine.saved_state).
        self.saved = saved
        accelerator.register_for_checkpointing(saved)
        self.allocation = allocation  # processes, batch and accumulation, so a resume can keep the global batch
        self.pending: tuple[Path, Path] | None = None  # (temporary folder, final name) of an unfinished write

    def save(self, step: int) -> Path:
        accelerator = self.accelerator
        self.flush()  # the previous checkpoint completes first: one write at a time
        final = checkpoint_dir(self.run_dir, step)
        tmp = final.with_name(f".tmp-{final.name}")
        if accelerator.is_main_process:
            for stale in final.parent.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
            write_allocation(tmp, self.allocation)
        accelerator.wait_for_everyone()
        with _model_left_out(accelerator, self.dcp_state is not None):
            accelerator.save_state(str(tmp))  # model, optimizer, scaler, every RNG, registered objects
        if self.dcp_state is not None:
            self.dcp_state.save(tmp)
        self.pending = (tmp, final)
        if self.dcp_state is None or not self.dcp_state.asynchronous:
            self.flush()
        return final

    def flush(self) -> None:
        """Wait for the checkpoint being written (if any) and rename it to its final name."""
        if self.pending is None:
            return
        (tmp, final), self.pending = self.pending, None
        if self.dcp_state is not None:
            self.dcp_state.wait()
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            for weights in tmp.rglob("*.safetensors"):  # Accelerate writes them 0600 (safetensors' default)
                share_like_umask(weights)
            _record_sizes(tmp)
            _fsync_tree(tmp)
            os.replace(tmp, final)  # atomic: the checkpoint appears complete or not at all
            for old in list_checkpoints(self.run_dir)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def resume_hint(self) -> str:
        """Where the run can go on from, for failure messages."""
        latest = latest_checkpoint(self.run_dir)
        if latest is None:
            return "No checkpoint was written; the same command starts the run again."
        return f"The newest checkpoint is {latest}; the same command resumes from it."

    def load(self, checkpoint: Path, dcp_state_for) -> None:
        """Restore everything `checkpoint` holds; `dcp_state_for()` gives the DcpState to read its DCP part."""
        from mlrun.engine.dcp_state import has_dcp_state

        sharded = has_dcp_state(checkpoint)
        if not sharded and self.dcp_state is not None and self.dcp_state.sharded:
            raise UsageError(
                f"checkpoint '{checkpoint}' holds whole weights (written by a run without distributed.strategy: "
                "fsdp); resume it with the strategy it was written with"
            )
        with _model_left_out(self.accelerator, sharded):
            self.accelerator.load_state(str(checkpoint))
        if sharded:
            dcp_state_for().load(checkpoint)


@contextlib.contextmanager
def _model_left_out(accelerator: Accelerator, left_out: bool):
    """Accelerate's save_state/load_state without the model and optimizer: DCP handles those.

    Accelerate offers a hook to skip saving models but none for optimizers, so its lists of
    prepared objects are emptied for the call and put back.
    """
    if not left_out:
        yield
        return
    models, optimizers = accelerator._models, accelerator._optimizers
    accelerator._models, accelerator._optimizers = [], []
    try:
        yield
    finally:
        accelerator._models, accelerator._optimizers = models, optimizers


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def _record_sizes(folder: Path) -> None:
    sizes = {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}
    (folder / FILE_SIZES).write_text(json.dumps(sizes, indent=1) + "\n")


def damage(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be whole (a missing, truncated or unreadable file), or None when it looks whole.

    Checkpoints written before `files.json` existed are trusted as they are, but for their RNG files.
    """
    return _size_damage(checkpoint) or _rng_damage(checkpoint)


def _size_damage(checkpoint: Path) -> str | None:
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


def _rng_damage(checkpoint: Path) -> str | None:
    """A missing or unreadable `random_states_<process>.pkl`, read as Accelerate reads it.

    Accelerate's load_state passes over such a file with an info-level log line and the run goes on
    with other random numbers (dropout, augmentation) than an unbroken run's: not the exact resume a
    checkpoint promises, so it counts as damage. Every process writes one; the sizes check cannot
    see a file damaged in place or one deleted together with files.json.
    """
    from accelerate.utils import load  # the reader load_state uses (weights_only)

    try:
        processes = int(json.loads((checkpoint / ALLOCATION).read_text())["processes"])
    except FileNotFoundError:  # written before allocation.json: process 0's file at least
        processes = 1
    except (ValueError, KeyError, TypeError):
        return f"{ALLOCATION} is unreadable"
    for index in range(processes):
        name = f"random_states_{index}.pkl"
        if not (checkpoint / name).is_file():
            return f"{name} is missing"
        try:
            states = load(checkpoint / name)
        except Exception as exc:
            return f"{name} is unreadable ({read_error(exc)})"
        if not isinstance(states, dict) or "torch_manual_seed" not in states:
            return f"{name} is unreadable (no torch RNG state in it)"
    return None


def read_error(exc: BaseException) -> str:
    """Why torch could not read a checkpoint file, in one line, without its advice to unpickle with
    weights_only=False: a damaged file needs an older checkpoint, and running its bytes as code mends nothing."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        detail = text.partition("WeightsUnpickler error:")[2].strip()
        return f"not a valid PyTorch file: {detail.splitlines()[0]}" if detail else "not a valid PyTorch file"
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.split(". ")[0].rstrip(".")  # torch's miniz error goes on with several sentences of guesses


def unreadable_file(checkpoint: Path) -> str | None:
    """The first of `checkpoint`'s files that will not load, with why ("its optimizer.bin is damaged, ...").

    Only asked after a load failed that no config change explains: torch's error names no file, and
    reading them all again costs a resume's load once more.
    """
    from accelerate.utils import load
    from safetensors.torch import load_file

    if not checkpoint.is_dir():
        return None
    for path in sorted(f for f in checkpoint.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".pkl")):
        try:
            if path.suffix == ".safetensors":
                load_file(path)
            else:  # as load_state reads it: our own registered state unpickled in full, the rest weights only
                load(path, map_location="cpu", weights_only=not path.name.startswith("custom_checkpoint_"))
        except Exception as exc:
            return f"its {path.name} is damaged, torch cannot read it ({read_error(exc)})"
    return None


def older_whole_checkpoint(checkpoint: Path) -> Path | None:
    """The newest whole checkpoint beside `checkpoint` and before it, to name in a message."""
    step = checkpoint_step(checkpoint)
    if step is None or not checkpoint.parent.is_dir():
        return None
    beside = sorted(p for p in checkpoint.parent.iterdir() if p.is_dir() and (checkpoint_step(p) or step) < step)
    return next((p for p in reversed(beside) if damage(p) is None), None)


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
    if _NAME.match(path.name) and not path.exists():  # the right form: most likely rotated away
        kept = ", ".join(p.name for p in list_checkpoints(path.parent.parent)) or "none"
        raise UsageError(
            f"--resume: checkpoint '{resume}' does not exist (removed by keep_checkpoints?); "
            f"this run's checkpoints: {kept}; pass one of them or auto"
        )
    if not (path.is_dir() and (_NAME.match(path.name) or (path / "random_states_0.pkl").exists())):
        raise UsageError(
            f"--resume: '{resume}' is not a checkpoint folder (expected .../checkpoints/step-XXXXXXXX); "
            "use auto, never or a checkpoint path"
        )
    problem = damage(path)
    if problem is not None:
        raise UsageError(f"--resume: checkpoint '{path}' is damaged: {problem}; pass an older checkpoint or auto")
    return path
