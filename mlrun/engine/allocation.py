"""Resume on another number of processes, keeping the global batch and the global sample order.

    torchrun --nproc-per-node 2 -m mlrun train c.yaml      # checkpoints with 2 processes x batch 32
    python -m mlrun train c.yaml                           # goes on with 1 process x 32 x accumulation 2

Each checkpoint records the allocation it was written under (`allocation.json`: processes,
per-process batch, accumulation). The training order is a function of (seed, epoch) over batches of
the per-process size, dealt round-robin, so an optimizer step always takes the next
`global batch` samples of the epoch's permutation whatever the allocation: keeping the global batch
keeps the samples each step sees. The per-process batch is kept where it can be (memory per process
stays the same) and the accumulation adjusted, else the per-process batch; where neither divides,
exit 2 naming the process counts that would work. config.yaml keeps the run's own settings; the
adjustment is said on stderr and recorded in manifest.json (`allocation`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from mlrun.config.schema import ExperimentConfig
from mlrun.errors import UsageError
from mlrun.ranks import first_process

ALLOCATION = "allocation.json"


@dataclass(frozen=True)
class Allocation:
    processes: int
    batch_size: int  # per process
    grad_accum_steps: int

    @property
    def global_batch(self) -> int:
        return self.processes * self.batch_size * self.grad_accum_steps

    def describe(self) -> str:
        return f"{self.processes} process(es) x batch {self.batch_size} x accumulation {self.grad_accum_steps}"


def of_config(config: ExperimentConfig, processes: int) -> Allocation:
    return Allocation(processes, config.data.batch_size, config.train.grad_accum_steps)


def write_allocation(folder: Path, allocation: Allocation) -> None:
    (folder / ALLOCATION).write_text(json.dumps(asdict(allocation)) + "\n")


def read_allocation(checkpoint: Path, config: ExperimentConfig) -> Allocation | None:
    """The allocation `checkpoint` was written under; for checkpoints from before it was recorded, the
    run's config with the manifest's world size (None when even that is unknown)."""
    path = checkpoint / ALLOCATION
    if path.is_file():
        return Allocation(**json.loads(path.read_text()))
    manifest = checkpoint.parent.parent / "manifest.json"
    if not manifest.is_file() or not isinstance(config.data.batch_size, int):
        return None
    return of_config(config, json.loads(manifest.read_text()).get("world_size", 1))


def keep_global_batch(
    config: ExperimentConfig, saved: Allocation | None, processes: int, changed: set[str]
) -> tuple[ExperimentConfig, dict | None]:
    """The config to go on with on `processes` processes, and the adjustment made (None if none).

    A batch size or accumulation the user changed on purpose (`changed`) is theirs: nothing is adjusted,
    but it must keep the global batch (refuse_new_global_batch).
    """
    if saved is None:
        return config, None
    if {"data.batch_size", "train.grad_accum_steps"} & changed:
        refuse_new_global_batch(saved, of_config(config, processes))
        return config, None
    if not isinstance(config.data.batch_size, int):
        config = config.model_copy(update={"data": config.data.model_copy(update={"batch_size": saved.batch_size})})
    current = of_config(config, processes)
    if current.global_batch == saved.global_batch:
        return config, None
    target = choose(saved, processes)
    if target is None:
        raise UsageError(impossible(saved, processes))
    config = config.model_copy(
        update={
            "data": config.data.model_copy(update={"batch_size": target.batch_size}),
            "train": config.train.model_copy(update={"grad_accum_steps": target.grad_accum_steps}),
        }
    )
    note = {
        "checkpoint": asdict(saved),
        "now": asdict(target),
        "global_batch": saved.global_batch,
        "message": f"resumed on {processes} process(es): {current.describe()} would change the global batch "
        f"of {saved.global_batch} ({saved.describe()}); going on with {target.describe()}",
    }
    if first_process():  # every process adjusts alike; the first one says so
        print(f"mlrun: {note['message']}", file=sys.stderr, flush=True)
    return config, note


def refuse_new_global_batch(saved: Allocation, now: Allocation) -> None:
    """A resume counts the checkpoint's steps, its position in the epoch and the schedule's length in optimizer
    steps of the saved global batch; another global batch would re-train part of the epoch and end past
    train.epochs (a user trial: epoch 1.96 -> 1.6, 4.49 epochs of 4). Same samples per step, split otherwise
    (batch 32 x accumulation 2 for 64 x 1), goes on exactly."""
    if now.global_batch != saved.global_batch:
        raise UsageError(
            f"data.batch_size / train.grad_accum_steps: {now.describe()} is a global batch of {now.global_batch}, "
            f"the checkpoint's was {saved.global_batch} ({saved.describe()}); its step count, position in the "
            f"epoch and schedule are counted in steps of {saved.global_batch} samples, so a resume keeps that: "
            f"split it otherwise (batch x accumulation x processes = {saved.global_batch}), or start a new run "
            "from these weights with init_from={run: ..., checkpoint: step-N}"
        )


def choose(saved: Allocation, processes: int) -> Allocation | None:
    """Keep the per-process batch and adjust accumulation, else keep accumulation and adjust the batch."""
    if saved.global_batch % processes:
        return None
    samples = saved.global_batch // processes  # per process per optimizer step
    if samples % saved.batch_size == 0:
        return Allocation(processes, saved.batch_size, samples // saved.batch_size)
    if samples % saved.grad_accum_steps == 0:
        return Allocation(processes, samples // saved.grad_accum_steps, saved.grad_accum_steps)
    return None


def impossible(saved: Allocation, processes: int) -> str:
    counts = [n for n in range(1, saved.global_batch + 1) if choose(saved, n) is not None][:10]
    return (
        f"cannot resume on {processes} process(es): the checkpoint trained with a global batch of "
        f"{saved.global_batch} ({saved.describe()}), which {processes} processes cannot split evenly. "
        f"Resume on {', '.join(map(str, counts))} processes, or change the global batch on purpose with "
        "data.batch_size=... train.grad_accum_steps=... --allow-config-change (the sample order then changes)"
    )


def check_pipeline_allocation(config, saved: Allocation | None, processes: int, checkpoint: Path) -> None:
    """A pipeline checkpoint holds each stage in the files of the process that ran it: only as many
    processes read it back (a global batch kept on other processes would still find no stage files).
    `saved` None: a checkpoint that recorded no allocation (its loading says what is wrong, if anything)."""
    if config.distributed.strategy == "pipeline" and saved is not None and saved.processes != processes:
        raise UsageError(
            f"cannot resume from {checkpoint} on {processes} process(es): a pipeline checkpoint holds one stage per "
            f"process, written by {saved.processes}; resume on {saved.processes} processes (torchrun "
            f"--nproc_per_node {saved.processes}), or start a new run from its weights (init_from)"
        )


def rescale_position(state, saved: Allocation, now: Allocation) -> None:
    """The loop's position in the epoch counts per-process micro-batches: convert it to the new allocation."""
    samples = state.batch_in_epoch * saved.processes * saved.batch_size  # consumed in this epoch, globally
    state.batch_in_epoch = samples // (now.processes * now.batch_size)
