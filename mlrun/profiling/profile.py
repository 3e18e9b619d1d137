"""Warm-up, then N measured optimizer steps of the real config, with a timer around each phase.

The step is the training loop's own (same components, same Accelerate verbs), written out here
with a synchronisation between phases: the breakdown needs it, the training loop must not pay it.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from pathlib import Path

import torch

from mlrun.config.schema import ExperimentConfig
from mlrun.engine.batches import to_device, train_loader
from mlrun.engine.build import build_components
from mlrun.engine.loop import calls_torch_directly, step_verbs
from mlrun.profiling.device import peak_flops, synchronize
from mlrun.profiling.memory import (
    ResidentPeak,
    SavedActivations,
    gradient_bytes,
    live_tensor_peak,
    optimizer_state_bytes,
    parameter_bytes,
)

PHASES = ("data", "forward", "backward", "optimizer")


def profile_config(
    config: ExperimentConfig, steps: int, warmup: int, trace_dir: Path | None = None, estimate: bool = False
) -> dict:
    from mlrun.engine.run import make_accelerator

    accelerator = make_accelerator(config)
    parts = build_components(config)
    device = accelerator.device
    direct = calls_torch_directly(accelerator)  # the loop's choice of verbs, so its costs are measured
    loader, sampler = train_loader(parts.bundle.train, config.data, config.seed, device.type == "cuda", not direct)
    if direct:
        model, optimizer = accelerator.prepare(parts.model, parts.optimizer)
    else:
        model, optimizer, loader = accelerator.prepare(parts.model, parts.optimizer, loader)
    if config.train.compile:
        model = torch.compile(model)
    verbs = step_verbs(accelerator, optimizer, direct)
    batches = _endless(loader, sampler, device if direct else None)
    positions = itertools.count()  # seeds each batch's augmentation, as the loop's batch position does
    augment = (lambda x, y: parts.augment(x, y, 0, next(positions))) if parts.augment else None
    accum = config.train.grad_accum_steps
    times: dict[str, float] = defaultdict(float)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Sampled from before the first step: the allocator keeps what warm-up freed, so a later start
    # would miss the memory training needs.
    with ResidentPeak() as resident:
        for _ in range(warmup):
            _step(accelerator, model, verbs, parts.loss_fn, batches, augment, accum, config.train.max_grad_norm, None)
        with _trace(trace_dir) as tracer:
            meter = _energy_meter(config, device)
            start = time.perf_counter()
            samples = sum(
                _step(
                    accelerator,
                    model,
                    verbs,
                    parts.loss_fn,
                    batches,
                    augment,
                    accum,
                    config.train.max_grad_norm,
                    times,
                    tracer,
                )
                for _ in range(steps)
            )
            total_s = time.perf_counter() - start
            energy = meter.stop(samples) if meter is not None else None
    flops = flops_per_step(model, parts.loss_fn, batches, accum)
    with SavedActivations(model) as saved:
        inputs, targets = next(batches)
        parts.loss_fn(model(inputs), targets)
    peak, source = peak_flops(device, config.train.precision)
    step_s = total_s / steps
    memory = {
        "parameters": parameter_bytes(model),
        "gradients": gradient_bytes(model, config.has_technique("optimizer_in_backward")),
        "optimizer_state": optimizer_state_bytes(optimizer),
        "activations": saved.bytes,
    }
    if device.type == "cuda":
        memory["measured_peak"] = int(torch.cuda.max_memory_allocated(device))
        peak_source = "CUDA allocator: max_memory_allocated"
    else:
        # What training added to resident memory, on top of the parameters that existed before it.
        memory["resident_peak"] = memory["parameters"] + resident.peak - resident.base
        tensors = live_tensor_peak(
            lambda: _step(
                accelerator, model, verbs, parts.loss_fn, batches, augment, accum, config.train.max_grad_norm, None
            ),
            device,
        )
        memory["measured_peak"] = memory["resident_peak"] if tensors is None else tensors
        peak_source = "resident memory" if tensors is None else "live tensors: profiler memory timeline of one step"
    predicted = None
    # After the measurement, because the estimate's forward pass leaves freed memory in the allocator
    # that would hide part of the measured peak; it reads only shapes and one forward, never a measurement.
    if estimate:
        from mlrun.profiling.estimate import estimate_peak

        inputs, targets = next(batches)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.precision)
        predicted = estimate_peak(
            model,
            parts.loss_fn,
            inputs,
            targets,
            config.optimizer.name,
            config.optimizer.settings,
            dtype,
            config.has_technique("optimizer_in_backward"),
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


def _endless(loader, sampler, device: torch.device | None):
    """Batches over epochs; `device`: move them there (the prepared loader's job, when not prepared)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):  # a prepared loader re-applies its own counter at every pass
            loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for batch in loader:
            yield batch if device is None else to_device(batch, device)
        epoch += 1


def _step(accelerator, model, verbs, loss_fn, batches, augment, accum, max_grad_norm, times, tracer=None) -> int:
    """One optimizer step (accum micro-batches) with a synchronised timer around each phase.

    `verbs` are the loop's (accumulate, backward, clip, optimizer step). `augment` (or None) runs in
    the training process after the batch arrives, as in the loop: its time falls under "other",
    never under "data".
    """
    accumulate, backward, clip, optimizer_step = verbs
    device, samples = accelerator.device, 0

    def phase(name, start):
        if times is not None:
            synchronize(device)
            times[name] += time.perf_counter() - start
        return time.perf_counter()

    for _ in range(accum):
        t = time.perf_counter()
        inputs, targets = next(batches)
        t = phase("data", t)
        if augment is not None:
            inputs, targets = augment(inputs, targets)
            t = phase("augment", t)
        with accumulate(model):
            loss = loss_fn(model(inputs), targets)
            t = phase("forward", t)
            backward(loss)
            t = phase("backward", t)
            if accelerator.sync_gradients and max_grad_norm:
                clip(model.parameters(), max_grad_norm)
            optimizer_step()
            if accelerator.sync_gradients:
                model.zero_grad(set_to_none=True)
            phase("optimizer", t)
        samples += len(inputs) * accelerator.num_processes
    if tracer is not None:
        tracer.step()
    return samples


def flops_per_step(model, loss_fn, batches, accum: int) -> int:
    """FLOPs of forward and backward over one optimizer step (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs, targets = next(batches)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(inputs), targets).backward()
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
