"""Warm-up, then N measured optimizer steps of the real config, with a timer around each phase.

The step is the training loop's own object (mlrun.engine.step: same preparation, objective, verbs,
non-finite check, schedule and callbacks such as EMA); profiling only swaps its `mark` hook for a
timer that synchronises between phases: the breakdown needs the sync, training must not pay it.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from pathlib import Path

import torch

from mlrun.config.schema import ExperimentConfig
from mlrun.data.batch import batch_len
from mlrun.engine.build import build_components
from mlrun.engine.preflight import check_batch_fits
from mlrun.engine.state import TrainState
from mlrun.engine.step import TrainStep, prepare_training
from mlrun.memory.estimate import estimate_peak, frees_gradients
from mlrun.memory.measure import (
    ResidentPeak,
    SavedActivations,
    gradient_bytes,
    live_tensor_peak,
    optimizer_state_bytes,
    parameter_bytes,
)
from mlrun.notices import native_notices_hidden
from mlrun.profiling.device import peak_flops, synchronize

PHASES = ("data", "forward", "backward", "optimizer")


class PhaseTimer:
    """`mark(phase)`: synchronise, then add the time since the previous mark to `times[phase]`."""

    def __init__(self, device: torch.device, times: dict[str, float]):
        self.device, self.times = device, times
        self.last = time.perf_counter()

    def restart(self) -> None:
        self.last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.times[phase] += now - self.last
        self.last = now


def profile_config(
    config: ExperimentConfig, steps: int, warmup: int, trace_dir: Path | None = None, estimate: bool = False
) -> dict:
    from mlrun.engine.run import make_accelerator

    accelerator = make_accelerator(config)
    parts = build_components(config)
    check_batch_fits(parts)  # as validate and train warn: the figures would describe a batch that never exists
    device = accelerator.device
    prepared = prepare_training(parts, accelerator, parts.callbacks)
    model, step = prepared.model, prepared.step
    batches = _endless(prepared.batches)
    positions = itertools.count()  # seeds each batch's augmentation, as the loop's batch position does
    augment = (lambda batch: prepared.batches.augmented(batch, 0, next(positions))) if parts.augment else None
    accum = config.train.grad_accum_steps
    state = TrainState()  # a scratch state: the step advances it as it advances the loop's
    times: dict[str, float] = defaultdict(float)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Sampled from before the first step: the allocator keeps what warm-up freed, so a later start
    # would miss the memory training needs.
    with ResidentPeak() as resident:
        for _ in range(warmup):
            _optimizer_step(step, batches, augment, state, accum, None)
        timer = PhaseTimer(device, times)
        step.mark = timer
        with native_notices_hidden(), _trace(trace_dir) as tracer:
            meter = _energy_meter(config, device)
            start = time.perf_counter()
            samples = sum(_optimizer_step(step, batches, augment, state, accum, timer, tracer) for _ in range(steps))
            total_s = time.perf_counter() - start
            energy = meter.stop(samples) if meter is not None else None
        step.mark = lambda phase: None
    flops = flops_per_step(model, parts.objective, batches, accum)
    with SavedActivations(model) as saved:
        parts.objective(model, next(batches))
    peak, source = peak_flops(device, config.train.precision)
    step_s = total_s / steps
    in_backward = frees_gradients([t.name for t in config.techniques])
    memory = {
        "parameters": parameter_bytes(model),
        "gradients": gradient_bytes(model, in_backward),
        "optimizer_state": optimizer_state_bytes(prepared.optimizer),
        "activations": saved.bytes,
    }
    if device.type == "cuda":
        memory["measured_peak"] = int(torch.cuda.max_memory_allocated(device))
        peak_source = "CUDA allocator: max_memory_allocated"
    else:
        # What training added to resident memory, on top of the parameters that existed before it.
        memory["resident_peak"] = memory["parameters"] + resident.peak - resident.base
        with native_notices_hidden():
            tensors = live_tensor_peak(lambda: _optimizer_step(step, batches, augment, state, accum, None), device)
        memory["measured_peak"] = memory["resident_peak"] if tensors is None else tensors
        peak_source = "resident memory" if tensors is None else "live tensors: profiler memory timeline of one step"
    predicted = None
    # After the measurement, because the estimate's forward pass leaves freed memory in the allocator
    # that would hide part of the measured peak; it reads only shapes and one forward, never a measurement.
    if estimate:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}.get(config.train.precision)
        predicted = estimate_peak(
            model,
            parts.objective,
            next(batches),
            config.optimizer.name,
            config.optimizer.settings,
            dtype,
            config.techniques,
            accum,
        )

    breakdown = {phase: times[phase] / steps for phase in PHASES}
    breakdown["other"] = max(0.0, step_s - sum(breakdown.values()))
    meta = parts.bundle.meta
    figures = {
        "device": str(device),
        "precision": config.train.precision,
        "steps": steps,
        "batch_size": config.data.batch_size,
        "grad_accum_steps": accum,
        "effective_batch": config.data.batch_size * accum * accelerator.num_processes,
        "step_ms": step_s * 1e3,
        "samples_per_s": samples / total_s,
        "breakdown_ms": {k: v * 1e3 for k, v in breakdown.items()},
        "data_wait_fraction": breakdown["data"] / step_s,
        "flops_per_step": flops,
        "achieved_flops": flops / step_s,
        "peak_flops": peak,
        "peak_flops_source": source,
        "mfu": flops / step_s / peak,
        "memory_bytes": memory,
        "peak_source": peak_source,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if meta.seq_len:
        figures["tokens_per_s"] = figures["samples_per_s"] * meta.seq_len
    if predicted is not None:
        figures["estimate_bytes"] = predicted
    if energy is not None:
        figures["energy"] = {**energy, "joules_per_step": energy["joules"] / steps}
    return figures


def _energy_meter(config: ExperimentConfig, device: torch.device):
    """Energy of the measured steps (kWh, g CO2, J per sample and per step); None when energy.enabled is off."""
    from mlrun.energy.meter import start_meter

    return start_meter(config.energy, device.type, local_processes=1, measures=True)


def _endless(batches):
    """The training batches on the device over epochs, not yet augmented (augmentation is timed apart)."""
    for epoch in itertools.count():
        yield from batches.epoch(epoch, augmented=False)


def _optimizer_step(step: TrainStep, batches, augment, state: TrainState, accum: int, timer, tracer=None) -> int:
    """One optimizer step (accum micro-batches) through the training step; returns the samples it saw.

    With a timer, waiting for a batch counts as "data"; augmentation runs in the training process
    after the batch arrives, as in the loop, so its time falls under "other", never under "data";
    the step's own marks time forward, backward and the optimizer.
    """
    samples = 0
    for _ in range(accum):
        if timer is not None:
            timer.restart()
        batch = next(batches)
        if timer is not None:
            timer("data")
        if augment is not None:
            batch = augment(batch)
            if timer is not None:
                timer("augment")
        step(batch, state)
        samples += batch_len(batch) * step.accelerator.num_processes
    if tracer is not None:
        tracer.step()
    return samples


def flops_per_step(model, objective, batches, accum: int) -> int:
    """FLOPs of forward and backward over one optimizer step (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        objective(model, next(batches)).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() * accum


class _NoTrace:
    def step(self) -> None:
        pass


def _trace(folder: Path | None):
    """torch.profiler over the measured steps, written for TensorBoard and Perfetto (chrome trace)."""
    if folder is None:
        import contextlib

        return contextlib.nullcontext(_NoTrace())
    from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

    folder.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(
        activities=activities,
        on_trace_ready=tensorboard_trace_handler(str(folder)),
        record_shapes=True,
        profile_memory=True,
    )
