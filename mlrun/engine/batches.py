"""Data loaders whose order is a pure function of (seed, epoch), so a resume can start mid-epoch.

`EpochBatchSampler.start_at(batch)` makes the next pass begin at that batch: resuming skips
indices, never loads and discards the batches before it. `set_epoch` keeps Accelerate's meaning
(its prepared loader calls it at every pass) and leaves the start position alone.
"""

from __future__ import annotations

import itertools
import os
import random
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mlrun.config.schema import DataSpec
from mlrun.data.batch import Batch, move_batch
from mlrun.data.bundle import collate


class EpochBatchSampler:
    """Batches of indices: a fresh permutation per epoch seeded by (seed, epoch)."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        index_tensors: bool = False,
        epoch_order=None,
        processes: int = 1,
        accumulation: int = 1,
    ):
        self.size, self.batch_size, self.shuffle, self.drop_last, self.seed = size, batch_size, shuffle, drop_last, seed
        # The processes Accelerate deals the batches to (round-robin): the epoch is evened out for them here,
        # or with drop_last cut to whole global batches (one batch per process for each accumulation step).
        self.processes, self.accumulation = processes, accumulation
        # A dataset's own shuffle, `epoch_order(seed, epoch) -> index tensor` (None: the plain permutation),
        # where a plain permutation would read badly (files read by row group); a pure function of (seed, epoch).
        self.epoch_order = epoch_order
        # Batches as index tensors rather than lists: a dataset with `__getitems__` then indexes without
        # building a tensor from a Python list (~10 us a batch). Only unsharded: Accelerate's
        # BatchSamplerShard joins batches with `+`, which must mean list concatenation.
        self.index_tensors = index_tensors
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_at(self, batch: int) -> None:
        self.start_batch = batch

    def batches_per_epoch(self) -> int:
        return batches_per_epoch(self.size, self.batch_size, self.drop_last, self.processes, self.accumulation)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self):
        order = self.epoch_order(self.seed, self.epoch) if self.shuffle and self.epoch_order else None
        if order is None and self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=gen)
        elif order is None:
            order = torch.arange(self.size)
        batches = list(order.split(self.batch_size))
        if self.drop_last:
            batches = batches[: self.batches_per_epoch()]
        elif self.processes > 1:
            batches = evened(batches, self.processes, self.batch_size)
        for batch in batches[self.start_batch :]:
            yield batch if self.index_tensors else batch.tolist()


def batches_per_epoch(size: int, batch_size: int, drop_last: bool, processes: int = 1, accumulation: int = 1) -> int:
    """The epoch's batches over all processes: with drop_last, whole global batches (one batch a process for
    each accumulation step); without, every sample, evened out to a multiple of the processes."""
    if drop_last:
        window = processes * accumulation
        return size // batch_size // window * window
    batches = -(-size // batch_size)
    return -(-batches // processes) * processes


def evened(batches: list[torch.Tensor], processes: int, batch_size: int) -> list[torch.Tensor]:
    """The epoch as Accelerate's BatchSamplerShard (even_batches) would deal it from its start: the last
    batch filled, and batches added until every process has as many, from the epoch's first samples.
    Done here over the whole epoch, so that a pass that starts mid-epoch (a resume) pads with the same
    samples; the shard then receives full batches in a multiple of the processes and adds none."""
    first = torch.cat(batches[:processes])
    while len(first) < processes * batch_size:
        first = torch.cat([first, first])
    batches, used = list(batches), 0
    if len(batches[-1]) < batch_size:
        used = batch_size - len(batches[-1])
        batches[-1] = torch.cat([batches[-1], first[:used]])
    while len(batches) % processes:
        batches.append(first[used : used + batch_size])
        used += batch_size
    return batches


def to_device(batch: Batch, device: torch.device) -> Batch:
    """A batch from an unprepared loader moved to the device: what Accelerate's prepared loader does."""
    if device.type == "cpu":
        return batch
    return move_batch(batch, device)


class TrainBatches:
    """The training batches of an epoch, on the device and augmented: what the loop iterates.

    `loader` is Accelerate's prepared loader (it moves batches and re-applies its own epoch counter)
    or, when the step calls torch directly, the plain loader (batches are moved here). Augmentation is
    seeded by the batch's global position, so workers, processes and resumes see the same draws.
    `wait_s` sums the time spent waiting for the loader (not moving or augmenting): no device sync.
    """

    def __init__(
        self, loader, sampler: EpochBatchSampler, device: torch.device, prepared: bool, augment, processes=1, rank=0
    ):
        self.loader, self.sampler, self.augment = loader, sampler, augment
        self.move = None if prepared else device
        self.processes, self.rank = processes, rank
        self.wait_s = 0.0

    def epoch(self, epoch: int, start: int = 0, augmented: bool = True):
        """The micro-batches of `epoch` from this process's `start`-th on."""
        if self.move is None:
            self.loader.set_epoch(epoch)
        # Also directly: under several processes Accelerate's BatchSamplerShard does not pass set_epoch on.
        self.sampler.set_epoch(epoch)
        # The sampler counts global batches; each process has consumed `start` of every `processes`.
        self.sampler.start_at(start * self.processes)
        batches = iter(self.loader)
        for position in itertools.count(start):
            waited = time.perf_counter()
            batch = next(batches, None)
            self.wait_s += time.perf_counter() - waited
            if batch is None:
                return
            if self.move is not None:
                batch = to_device(batch, self.move)
            yield self.augmented(batch, epoch, position) if augmented else batch

    def augmented(self, batch, epoch: int, position: int):
        """`batch` (this process's `position`-th of `epoch`) through the run's augmentation, if any."""
        if self.augment is None:
            return batch
        return self.augment(batch, epoch, position * self.processes + self.rank)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def train_loader(
    dataset: Dataset,
    spec: DataSpec,
    seed: int,
    on_cuda: bool,
    processes: int = 1,
    sharded: bool = True,
    accumulation: int = 1,
) -> tuple[DataLoader, EpochBatchSampler]:
    """The training loader and its sampler; `sharded`: the loader will go through Accelerate's prepare,
    which deals its batches to `processes`; each optimizer step takes `accumulation` of them a process."""
    index_tensors = not sharded and hasattr(dataset, "__getitems__")
    order = getattr(dataset, "epoch_order", None)
    sampler = EpochBatchSampler(
        len(dataset), spec.batch_size, spec.shuffle, spec.drop_last, seed, index_tensors, order, processes, accumulation
    )
    # Its own generator: creating an iterator draws a worker base seed, which must not consume the
    # global torch RNG (that would shift dropout masks after a mid-epoch resume).
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        **_loader_options(spec, dataset, on_cuda),
        worker_init_fn=_seed_worker,
        generator=generator,
    )
    return loader, sampler


def eval_loader(dataset: Dataset, spec: DataSpec, on_cuda: bool) -> DataLoader:
    batch_size = spec.eval_batch_size or 4 * spec.batch_size
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=False, drop_last=False, seed=0)
    # Built like the training loader, with its own generator, because Accelerate rebuilds a loader
    # given `batch_size` without its generator: creating worker iterators for the first evaluation of
    # a resumed run would then draw from the global RNG and shift every later dropout mask.
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        generator=torch.Generator(),
        **_loader_options(spec, dataset, on_cuda),
    )


def resolve_workers(spec: DataSpec, dataset: Dataset) -> int:
    """`num_workers: auto`: none for data already in memory (a batch is one tensor index, cheaper than
    moving it between processes), else one per core the training process does not need, up to 8."""
    if spec.num_workers != "auto":
        return spec.num_workers
    if getattr(dataset, "in_memory", False):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def _loader_options(spec: DataSpec, dataset: Dataset, on_cuda: bool) -> dict:
    workers = resolve_workers(spec, dataset)
    options = {
        "num_workers": workers,
        "pin_memory": on_cuda if spec.pin_memory is None else spec.pin_memory,
        "persistent_workers": workers > 0 and spec.persistent_workers,
    }
    if workers > 0 and spec.prefetch_factor is not None:
        options["prefetch_factor"] = spec.prefetch_factor
    return options
