"""One training run from a validated config: run directory, Accelerator, loop, summary.json.

Used by `mlrun train` and by `mlrun tune` (each trial is a full run in its own directory).
"""

from __future__ import annotations

import pickle
import shutil
import time
from pathlib import Path

from mlrun.callbacks import Callback
from mlrun.config.load import load_config
from mlrun.config.schema import ExperimentConfig
from mlrun.engine.checkpoint import latest_checkpoint, resolve_resume
from mlrun.engine.run_dir import FINISHED, manifest, peak_memory_bytes, read_summary, write_config, write_json
from mlrun.engine.state import TrainState
from mlrun.errors import RunFailed, RunInterrupted, UsageError


def run_training(
    config: ExperimentConfig, resume: str = "auto", overwrite: bool = False, callbacks: tuple[Callback, ...] = ()
) -> TrainState:
    """Train `config` in <output_dir>/<name>; summary.json is written whatever happens."""
    from mlrun.data.bundle import fingerprint, load_fitted_transform
    from mlrun.engine.autobatch import resolve_batch_size, with_batch_size
    from mlrun.engine.batches import resolve_workers
    from mlrun.engine.build import build_components
    from mlrun.engine.loop import TrainingLoop

    run_dir = Path(config.output_dir) / config.name
    accelerator = make_accelerator(config)
    # Every rank checks (and raises the same error); only the main process clears anything.
    resume_from, clear = decide_resume(run_dir, resume, overwrite)
    if clear and accelerator.is_main_process:
        shutil.rmtree(run_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    if resume_from is not None and config.data.batch_size == "auto":
        # A resumed run keeps the batch size it started with (its data position counts in those
        # batches); every other key, overrides included, comes from this invocation.
        config = with_batch_size(config, load_config(run_dir / "config.yaml").data.batch_size)
    config = resolve_batch_size(config)  # auto -> a number, written to config.yaml so reruns are exact
    # A resumed run goes on with the preprocessing its weights were trained under, even if files changed.
    fitted = load_fitted_transform(run_dir) if resume_from is not None else None
    parts = build_components(config, accelerator.num_processes, fitted_transform=fitted)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, config.model_dump(mode="json"))
        effective_batch = config.data.batch_size * accelerator.num_processes * config.train.grad_accum_steps
        prints = {split: fingerprint(getattr(parts.bundle, split)) for split in ("train", "val")}
        info = manifest(
            accelerator.num_processes, str(accelerator.device), config.train.precision, effective_batch, prints
        )
        info["resumed_from"] = str(resume_from) if resume_from else None
        info["data_cleaning"] = parts.bundle.cleaning
        info["num_workers"] = resolve_workers(config.data, parts.bundle.train)
        if parts.bundle.transform is not None:  # the fitted preprocessing, for eval and export
            with open(run_dir / "preprocessing.pkl", "wb") as file:
                pickle.dump(parts.bundle.transform, file)
        write_json(run_dir / "manifest.json", info)

    loop = TrainingLoop(parts, accelerator, run_dir, extra_callbacks=callbacks)
    meter, previous_joules = start_energy(config, accelerator, run_dir, resumed=resume_from is not None)
    started, message = time.time(), None
    try:
        return loop.run(resume_from)
    except (RunFailed, RunInterrupted, UsageError) as exc:
        message = str(exc)
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        raise RunFailed(
            f"training crashed at step {loop.state.step}: {message}. "
            f"The newest checkpoint is {loop.latest_checkpoint_text()}; rerun to resume from it."
        ) from exc
    finally:
        summary = make_summary(config, loop, loop.state.stop_reason or "failed", time.time() - started, message)
        if meter is not None:
            summary["energy"] = meter.stop(loop.state.samples_seen, previous_joules)
        if accelerator.is_main_process:
            write_json(run_dir / "summary.json", summary)
        for tracker in parts.trackers:
            tracker.finish(summary)


def start_energy(config: ExperimentConfig, accelerator, run_dir: Path, resumed: bool):
    """(a started energy meter on the main process or None, joules of earlier attempts of this run)."""
    import os

    from mlrun.energy.meter import start_meter

    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    meter = start_meter(config.energy, accelerator.device.type, local, accelerator.is_main_process)
    if meter is not None and local < accelerator.num_processes:
        meter.notes.append(f"energy of the first host only ({local} of {accelerator.num_processes} processes)")
    previous = (read_summary(run_dir) or {}).get("energy") if resumed else None
    return meter, (previous or {}).get("joules") or 0.0


def decide_resume(run_dir: Path, resume: str, overwrite: bool) -> tuple[Path | None, bool]:
    """(the checkpoint to resume from or None, whether the run directory must be cleared first)."""
    if overwrite:
        return None, run_dir.exists()
    summary = read_summary(run_dir)
    if summary and summary["status"] in FINISHED and resume == "auto":
        raise UsageError(
            f"run '{run_dir}' already finished ({summary['status']}). Pass --overwrite to train it again, "
            f"--resume {latest_checkpoint(run_dir)} to continue from its last checkpoint (e.g. with more epochs), "
            "or choose another name=..."
        )
    if resume == "never" and latest_checkpoint(run_dir):
        raise UsageError(f"run '{run_dir}' has checkpoints; pass --overwrite to discard them, or --resume auto.")
    checkpoint = resolve_resume(run_dir, resume)
    # A start that died before its first checkpoint leaves nothing worth keeping.
    return checkpoint, checkpoint is None and run_dir.exists()


def make_accelerator(config: ExperimentConfig):
    import torch
    from accelerate import Accelerator

    train = config.train
    if train.precision == "fp16" and not torch.cuda.is_available():
        raise UsageError(
            "train.precision: fp16 needs a GPU (Accelerate would silently train in fp32 on CPU); use bf16 on CPU"
        )
    if train.deterministic:
        torch.use_deterministic_algorithms(True)
    from mlrun.engine.parallel import accelerator_kwargs

    return Accelerator(
        **accelerator_kwargs(config.distributed),
        cpu=not torch.cuda.is_available(),  # lets torchrun / accelerate launch form a gloo group on CPUs
        mixed_precision="no" if train.precision == "fp32" else train.precision,
        gradient_accumulation_steps=train.grad_accum_steps,
        rng_types=[],  # the data order is seeded by (seed, epoch) in EpochBatchSampler, never synced
        step_scheduler_with_optimizer=False,  # the loop steps the schedule itself, once per optimizer step
    )


def make_summary(config: ExperimentConfig, loop, status: str, wall_time_s: float, message: str | None) -> dict:
    state, plan = loop.state, loop.parts.plan
    best = config.train.best
    return {
        "status": status,
        "message": message,
        "steps": state.step,
        "total_steps": plan.total_steps,
        "epochs": round(state.epoch + state.batch_in_epoch / max(1, plan.batches_per_epoch), 4),
        "final": state.last_eval,
        "best": {"monitor": best.monitor, "value": state.best_value, "step": state.best_step}
        if best and state.best_value is not None
        else None,
        "wall_time_s": round(wall_time_s, 3),
        "train_time_s": round(state.train_time_s, 3),
        "samples_per_s": state.samples_seen / state.train_time_s if state.train_time_s > 0 else 0.0,
        "data_wait_fraction": round(min(1.0, state.data_wait_s / state.train_time_s), 4) if state.train_time_s else 0.0,
        "peak_memory_bytes": peak_memory_bytes(loop.accelerator.device.type),
        "nonfinite_skipped": state.nonfinite_skipped,
        "overflow_skipped": state.overflow_skipped,
        "last_checkpoint": loop.latest_checkpoint_text(),
    }
