"""One training run from a validated config: run directory, Accelerator, loop, summary.json.

Used by `mlrun train` and by `mlrun tune` (each trial is a full run in its own directory).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

from mlrun.callbacks import Callback
from mlrun.config.schema import ExperimentConfig
from mlrun.engine.allocation import (
    check_pipeline_allocation,
    keep_global_batch,
    of_config,
    read_allocation,
    rescale_position,
)
from mlrun.engine.checkpoint import CHECKPOINTS, checkpoint_step, latest_checkpoint, resolve_resume
from mlrun.engine.config_change import (
    Changes,
    check_resume_config,
    check_resume_data,
    describe,
    explain_load_failure,
    record_changes,
)
from mlrun.engine.energy_attempts import EnergyTotal, earlier_attempts
from mlrun.engine.run_dir import (
    FINISHED,
    check_trainable,
    check_writable,
    clear_train_outputs,
    manifest,
    peak_memory_bytes,
    peak_memory_measure,
    read_json,
    read_summary,
    write_config,
    write_fitted_transform,
    write_json,
)
from mlrun.engine.state import TrainState
from mlrun.errors import MlrunError, RunFailed, Terminated, UsageError
from mlrun.tracking.hosted import lagging


def run_training(
    config: ExperimentConfig,
    resume: str = "auto",
    overwrite: bool = False,
    callbacks: tuple[Callback, ...] = (),
    allow_config_change: bool = False,
) -> TrainState:
    """Train `config` in <output_dir>/<name>, the only trainer of that folder while it runs (run_lock)."""
    from mlrun.engine.run_lock import held_run_folder

    run_dir = Path(config.output_dir).resolve() / config.name
    # Before the lock file is written beside the run: a folder train never writes (a run's checkpoints/, a
    # user's files) exits 2, and so does an output_dir that cannot be written; each process checks.
    check_trainable(run_dir, overwrite)
    check_writable(run_dir)
    with held_run_folder(run_dir):
        return _train_in_folder(config, resume, overwrite, callbacks, allow_config_change)


def _train_in_folder(
    config: ExperimentConfig,
    resume: str,
    overwrite: bool,
    callbacks: tuple[Callback, ...],
    allow_config_change: bool,
) -> TrainState:
    """Train `config` in <output_dir>/<name>; summary.json is written whatever happens once training starts.

    Nothing in the run directory is touched until the components are built, the dry run passed and
    the checkpoint (if any) loaded, so a start that fails leaves a finished run's records as they were.
    """
    from mlrun.config.paths import with_local_paths_resolved
    from mlrun.data.bundle import fingerprint, load_fitted_transform
    from mlrun.engine.autobatch import resolve_batch_size
    from mlrun.engine.build import build_components
    from mlrun.engine.loop import TrainingLoop
    from mlrun.engine.preflight import check_components, check_prepared_batch
    from mlrun.engine.restore import check_tokenizer

    # config.yaml keeps data, model and init_from paths absolute: eval and predict then work from any directory.
    config = with_local_paths_resolved(config)
    run_dir = Path(config.output_dir) / config.name
    accelerator = make_accelerator(config)
    # Every rank checks (and raises the same error); only the main process clears anything.
    resume_from, clear = decide_resume(run_dir, resume, overwrite, [tracker.name for tracker in config.tracking])
    changes: Changes = {}
    origin = run_dir  # whose records a resume compares with (checkpoint_run)
    recorded, reallocated = config, None  # config.yaml keeps the run's own batch and accumulation
    if resume_from is not None:
        # An explicit checkpoint path asks for the resume by name: a changed config is then expected.
        allowed = allow_config_change or resume != "auto"
        origin = checkpoint_run(resume_from, run_dir)  # another run's, for a run forked from its checkpoint
        config, changes = check_resume_config(origin, config, resume_from, allowed)  # keeps its batch size
        if changes and accelerator.is_main_process:
            print(f"mlrun: resume from {resume_from.name} with config changes:\n{describe(changes)}", file=sys.stderr)
        recorded, saved_allocation = config, read_allocation(resume_from, config)
        check_pipeline_allocation(config, saved_allocation, accelerator.num_processes, resume_from)
        config, reallocated = keep_global_batch(config, saved_allocation, accelerator.num_processes, set(changes))
        accelerator.gradient_accumulation_steps = config.train.grad_accum_steps  # made before the adjustment
    batch_was_auto = config.data.batch_size == "auto"
    config = resolve_batch_size(config)  # auto -> a number, written to config.yaml so reruns are exact
    recorded = config if reallocated is None else recorded
    # A resumed run goes on with the preprocessing its weights were trained under, even if files changed.
    fitted = load_fitted_transform(origin) if resume_from is not None else None
    # A resume continues the run: its checkpoint holds the weights, init_from is not read again.
    parts = build_components(
        config, accelerator.num_processes, fitted_transform=fitted, init_weights=resume_from is None
    )
    if resume_from is not None:
        check_tokenizer(origin)
    # For manifest.json (the first process writes it) and a resume's data check (every process): a lazy
    # dataset's fingerprint reads its files' sizes, not worth doing where nothing uses it.
    wanted = accelerator.is_main_process or resume_from is not None
    prints = {split: fingerprint(getattr(parts.bundle, split)) for split in ("train", "val")} if wanted else {}
    if resume_from is None:  # a resumed run was checked when it started
        check_components(parts, batch_was_auto, accelerator.device.type)
    else:
        data_changes = check_resume_data(origin, prints, allowed)
        if data_changes and accelerator.is_main_process:
            print(f"mlrun: resume from {resume_from.name} on changed data:\n{describe(data_changes)}", file=sys.stderr)
        changes = {**changes, **data_changes}
    if clear and accelerator.is_main_process:  # only now: a start that cannot build keeps the old run
        clear_train_outputs(run_dir)  # lr_find/, tune/, compress/, export/ and a user's files stay
    accelerator.wait_for_everyone()
    compile_cache = None
    if config.train.compile:  # before the first compile, which happens at the first forward
        from mlrun.engine.compile import CompileCache

        compile_cache = CompileCache(run_dir)
        compile_cache.load()
    energy_total = EnergyTotal()  # the running energy total goes into every checkpoint
    loop = TrainingLoop(parts, accelerator, run_dir, extra_callbacks=(*callbacks, energy_total))
    check_prepared_batch(parts, accelerator)  # exit 2 on a model/data mismatch, before anything is written
    if resume_from is not None:
        try:
            loop.restore(resume_from)
        except UsageError:
            raise  # a component's own refusal (wsd asked to change inside its decay) already says what to do
        except Exception as exc:
            raise explain_load_failure(resume_from, exc, changes) from exc
        now = of_config(config, accelerator.num_processes)
        if saved_allocation is not None and now != saved_allocation:  # another split of the same global batch
            rescale_position(loop.state, saved_allocation, now)
            # Accelerate steps the optimizer when its count of the epoch's micro-batches reaches a multiple
            # of the accumulation; the checkpoint's count is the old allocation's.
            accelerator.step = loop.state.batch_in_epoch
    if accelerator.is_main_process:
        write_records(run_dir, parts, accelerator, resume_from, loop.state.step, changes, recorded, reallocated, prints)
    meter, previous = start_energy(config, accelerator, run_dir, energy_total, resumed=resume_from is not None)
    message, written = None, True
    try:
        state = loop.run(tracked=recorded)  # a batch re-split for another process count is no change to track
    except MlrunError as exc:  # already says what went wrong (a usage error, a failed run, a study's own)
        message = str(exc)
        raise
    except (KeyboardInterrupt, Terminated):  # a signal before the loop's own handler was in place: a stop
        loop.state.stop_reason = loop.state.stop_reason or "interrupted"
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        raise RunFailed(
            f"training crashed at step {loop.state.step}: {message}.", loop.checkpoints.resume_hint()
        ) from exc
    finally:
        summary = make_summary(config, loop, loop.state.stop_reason or "failed", message)
        if meter is not None:
            summary["energy"] = meter.stop(loop.state.samples_seen, previous)
        if accelerator.is_main_process:
            written = write_summary(run_dir, summary)
            if compile_cache is not None:
                compile_cache.save()
        for tracker in parts.trackers:
            tracker.finish(summary)
    if not written:  # after a crash its own report says how to go on; here the run would look interrupted
        raise RunFailed("training ended but summary.json could not be written.", loop.checkpoints.resume_hint())
    return state


def write_summary(run_dir: Path, summary: dict) -> bool:
    """summary.json; False, with a warning, where it cannot be written (a full disk): the report of how the
    run ended (a crash's included) must still reach the user instead of this OSError."""
    try:
        write_json(run_dir / "summary.json", summary)
    except OSError as exc:
        print(f"mlrun: warning: could not write {run_dir / 'summary.json'}: {exc}", file=sys.stderr, flush=True)
        return False
    return True


def write_records(
    run_dir: Path,
    parts,
    accelerator,
    resume_from: Path | None,
    step: int,
    changes: Changes,
    recorded: ExperimentConfig,
    reallocated: dict | None,
    prints: dict[str, str | None],
) -> None:
    """config.yaml (`recorded`: the run's own settings), manifest.json (with the history of accepted
    config changes, the allocation and the data's fingerprints `prints`), preprocessing.pkl / .json,
    example_inputs.safetensors."""
    from mlrun.engine.batches import resolve_workers
    from mlrun.engine.example_inputs import EXAMPLE_INPUTS, write_example_inputs

    config = parts.config
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, recorded.model_dump(mode="json"))
    effective_batch = config.data.batch_size * accelerator.num_processes * config.train.grad_accum_steps
    info = manifest(accelerator.num_processes, str(accelerator.device), config.train.precision, effective_batch, prints)
    info["resumed_from"] = str(resume_from) if resume_from else None
    info["data_cleaning"] = parts.bundle.cleaning
    info["num_workers"] = resolve_workers(config.data, parts.bundle.train)
    previous = read_json(run_dir / "manifest.json") if resume_from is not None else None
    # The init_from report of the run's first start: a resume does not read the source again.
    info["init_from"] = parts.init_report if resume_from is None else (previous or {}).get("init_from")
    record_changes(info, previous, step, changes)
    info["allocation"] = {**asdict(of_config(config, accelerator.num_processes)), "adjusted_on_resume": reallocated}
    write_fitted_transform(run_dir, parts.bundle.transform)
    # The statistics the weights were trained under (image mean/std, ...), kept from the first start:
    # eval and predict on other data pin them instead of fitting anew (engine/restore.py).
    if parts.bundle.preprocessing and (resume_from is None or not (run_dir / "preprocessing.json").is_file()):
        write_json(run_dir / "preprocessing.json", parts.bundle.preprocessing)
    write_json(run_dir / "manifest.json", info)
    # The model's inputs and DataMeta, from the same start: export needs them, not the data (example_inputs.py).
    if resume_from is None or not (run_dir / EXAMPLE_INPUTS).is_file():
        write_example_inputs(run_dir, parts.bundle)


def start_energy(config: ExperimentConfig, accelerator, run_dir: Path, total: EnergyTotal, resumed: bool):
    """(a started energy meter on the main process or None, (joules, seconds) of earlier attempts of this run)."""
    import os

    from mlrun.energy.meter import start_meter

    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    meter = start_meter(config.energy, accelerator.device.type, local, accelerator.is_main_process)
    if meter is not None and local < accelerator.num_processes:
        meter.notes.append(f"energy of the first host only ({local} of {accelerator.num_processes} processes)")
    # A killed attempt wrote no summary.json: its checkpoints recorded the total (mlrun.engine.energy_attempts).
    previous = earlier_attempts((read_summary(run_dir) or {}).get("energy"), total.saved) if resumed else (0.0, 0.0)
    total.meter, total.previous = meter, previous
    return meter, previous


def decide_resume(run_dir: Path, resume: str, overwrite: bool, trackers: list[str]) -> tuple[Path | None, bool]:
    """(the checkpoint to resume from or None, whether train's earlier outputs must be cleared first).

    Clearing removes only what train itself wrote (run_dir.TRAIN_OUTPUTS); a folder whose files train
    did not write exited 2 before (run_training's check_trainable). `trackers`: the config's, so that a
    finished run's message can say how to catch up a tracked run that lacks figures.
    """
    if overwrite:
        return None, run_dir.exists()
    summary = read_summary(run_dir)
    if summary and summary["status"] in FINISHED and (going_on := unfinished_extension(run_dir, resume, summary)):
        return going_on, False
    if summary and summary["status"] in FINISHED and resume in ("auto", "never"):
        latest = latest_checkpoint(run_dir)
        extend = f"--resume {latest} to continue from its last checkpoint (e.g. with more epochs), " if latest else ""
        behind = lagging(run_dir, trackers) if latest else []
        catch_up = (
            f" Its tracked run in {' and '.join(behind)}: the tracker went off, and --resume {latest} as it "
            "is sends the rest and trains nothing more."
            if behind
            else ""
        )
        raise UsageError(
            f"run '{run_dir}' already finished ({summary['status']}). Pass --overwrite to train it again "
            f"(lr_find/, tune/, profile/, compress/, export/ are kept), {extend}or choose another name=...{catch_up}"
        )
    if resume == "never" and latest_checkpoint(run_dir):
        raise UsageError(f"run '{run_dir}' has checkpoints; pass --overwrite to discard them, or --resume auto.")
    recorded = (summary or {}).get("last_checkpoint")
    if resume == "auto" and recorded and latest_checkpoint(run_dir) is None:  # never a silent start from step 0
        raise UsageError(
            f"run '{run_dir}': summary.json records a checkpoint at step {checkpoint_step(Path(recorded))} "
            f"({recorded}) but {run_dir / CHECKPOINTS} holds none (deleted or moved?). Put the checkpoints back "
            "to resume, pass --overwrite to start over from step 0 (the earlier metrics.jsonl and records are "
            "cleared), or choose another name=..."
        )
    checkpoint = resolve_resume(run_dir, resume)
    # A start that died before its first checkpoint leaves nothing worth keeping.
    return checkpoint, checkpoint is None and run_dir.exists()


def checkpoint_run(checkpoint: Path, run_dir: Path) -> Path:
    """The run whose records (config.yaml, manifest.json, preprocessing) a resume compares with and goes on
    from: `run_dir` itself, or, when a new run starts from another run's checkpoint (`--resume
    runs/a/checkpoints/step-N` under another name), run a, so its config changes are named and recorded."""
    if (run_dir / "config.yaml").is_file() or checkpoint.parent.name != CHECKPOINTS:
        return run_dir
    other = checkpoint.parent.parent
    return other if (other / "config.yaml").is_file() else run_dir


def unfinished_extension(run_dir: Path, resume: str, summary: dict) -> Path | None:
    """The newest checkpoint of an extension of this finished run that stopped before its end (killed,
    preempted), when the command is run again as it was (a requeued job: `--resume` of the finished
    run's last checkpoint, or auto). None otherwise: an older checkpoint named on purpose is a rewind."""
    finished = summary.get("steps", 0)
    if resume != "auto":
        named = Path(resume)
        if named.parent.resolve() != (run_dir / "checkpoints").resolve() or checkpoint_step(named) != finished:
            return None
    newest = latest_checkpoint(run_dir)
    if newest is None or (checkpoint_step(newest) or 0) <= finished:
        return None
    going_on = resolve_resume(run_dir, "auto")  # the newest whole one: a kill may have damaged the last
    if going_on is not None and (checkpoint_step(going_on) or 0) > finished:
        print(f"mlrun: resume: the extension of this finished run goes on from {going_on}", file=sys.stderr)
        return going_on
    return None


def check_device_settings(config: ExperimentConfig) -> None:
    """Exit 2 on settings this machine or the strategy cannot run (fp16/fp8 without their GPU, ...): asked by
    train before anything is built, and by validate, which passed them while train refused (a user trial)."""
    import torch

    train = config.train
    if train.precision == "fp16" and not torch.cuda.is_available():
        raise UsageError(
            "train.precision: fp16 needs a GPU (Accelerate would silently train in fp32 on CPU); use bf16 on CPU"
        )
    if train.precision == "fp8":
        from mlrun.engine.fp8 import check_fp8_device

        check_fp8_device()
    if train.checkpoint_async and config.distributed.strategy in ("pipeline", "deepspeed"):
        raise UsageError(
            f"train.checkpoint_async: the {config.distributed.strategy} strategy writes its own checkpoints, "
            "which mlrun cannot write in the background; set train.checkpoint_async: false"
        )
    if config.distributed.strategy == "fsdp":
        from mlrun.engine.fsdp import check_settings
        from mlrun.registry import optimizers

        check_settings(config.distributed, train.precision)
        if optimizers.trait(config.optimizer.name, "whole_matrices", False):
            raise UsageError(
                f"optimizer '{config.optimizer.name}' updates each weight matrix as a whole, which FSDP shards "
                "across processes (its updates differed from one process's); use distributed.strategy: ddp, "
                "or another optimizer"
            )


def make_accelerator(config: ExperimentConfig):
    import torch
    from accelerate import Accelerator

    train = config.train
    if train.deterministic:
        # cuBLAS is deterministic only with a fixed workspace; without this variable, deterministic
        # mode makes torch raise at the first CUDA matmul. Set before any cuBLAS handle exists.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    check_device_settings(config)
    if train.deterministic:
        torch.use_deterministic_algorithms(True)
    from mlrun.engine.parallel import accelerator_kwargs

    return Accelerator(
        **accelerator_kwargs(config.distributed),
        cpu=not torch.cuda.is_available(),  # lets torchrun / accelerate launch form a gloo group on CPUs
        # fp8: float8 Linear matmuls (mlrun.engine.fp8), everything else under bf16 autocast.
        mixed_precision={"fp32": "no", "fp8": "bf16"}.get(train.precision, train.precision),
        gradient_accumulation_steps=train.grad_accum_steps,
        rng_types=[],  # the data order is seeded by (seed, epoch) in EpochBatchSampler, never synced
        step_scheduler_with_optimizer=False,  # the loop steps the schedule itself, once per optimizer step
    )


def make_summary(config: ExperimentConfig, loop, status: str, message: str | None) -> dict:
    """summary.json's record. Wall and training time sum every attempt of the run, each up to the checkpoint
    the next resumed from (both travel in the loop's state), so a killed-and-resumed run compares fairly."""
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
        "wall_time_s": round(state.wall_time_s, 3),
        "train_time_s": round(state.train_time_s, 3),
        "samples_per_s": state.samples_seen / state.train_time_s if state.train_time_s > 0 else 0.0,
        "data_wait_fraction": round(min(1.0, state.data_wait_s / state.train_time_s), 4) if state.train_time_s else 0.0,
        "peak_memory_bytes": peak_memory_bytes(loop.accelerator.device.type),
        "peak_memory_measure": peak_memory_measure(loop.accelerator.device.type),
        "nonfinite_skipped": state.nonfinite_skipped,
        "overflow_skipped": state.overflow_skipped,
        "last_checkpoint": str(latest) if (latest := latest_checkpoint(loop.checkpoints.run_dir)) else None,
    }
