"""Peak training memory predicted before training: bytes per parameter plus one micro-batch's activations.

The peak falls at one of two moments, and the estimate is the larger:
  end of forward:    parameters + optimizer state + activations saved for backward
                     (+ gradients when they persist across accumulated micro-batches)
                     + backward's first transient (one recomputed block under checkpointing,
                       else the gradient of the largest saved tensor and of the logits)
  optimizer step:    parameters + optimizer state + gradients + the step's per-parameter temporaries
It predicts live tensor bytes, what `mlrun profile` measures (CUDA's allocator peak; the profiler's
memory timeline on CPU). A CPU process's resident memory is larger by what glibc keeps of freed memory.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mlrun.profiling.memory import SavedActivations, gradient_bytes, parameter_bytes

# Optimizer state in fp32 values (4 bytes) per parameter element; low-bit AdamW stores 2 or 1 byte
# (plus a small per-block scale, left out).
STATE_VALUES = {
    "adamw": 2,
    "adam": 2,
    "lamb": 2,
    "rmsprop": 1,
    "adagrad": 1,
    "sgd": 1,
    "adamw8bit": 0.5,
    "adamw4bit": 0.25,
}


def optimizer_state_estimate(model: nn.Module, optimizer_name: str, settings: dict) -> int:
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer_name == "adafactor":  # factored second moments: a row and a column vector per matrix
        return sum(4 * (p.shape[0] + p.shape[1:].numel()) if p.ndim >= 2 else 4 * p.numel() for p in params)
    values = STATE_VALUES.get(optimizer_name, 2)
    if optimizer_name == "sgd" and not settings.get("momentum", 0.9):
        values = 0
    if optimizer_name == "rmsprop" and settings.get("momentum", 0.0):
        values += 1
    return int(values * 4 * sum(p.numel() for p in params))


def _saved_by_forward(model, loss_fn, inputs, targets, autocast_dtype) -> tuple[SavedActivations, torch.Tensor]:
    with (
        SavedActivations(model) as saved,
        torch.autocast(inputs.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None),
    ):
        logits = model(inputs)
        loss_fn(logits, targets)
    return saved, logits


@contextlib.contextmanager
def _without_checkpointing(model: nn.Module):
    """Blocks whose forward activation checkpointing patched, temporarily back to their class forward."""
    patched = [b for b in getattr(model, "blocks", []) if "forward" in b.__dict__]
    forwards = [b.__dict__.pop("forward") for b in patched]
    try:
        yield len(patched)
    finally:
        for block, forward in zip(patched, forwards):
            block.forward = forward


def estimate_peak(
    model: nn.Module,
    loss_fn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    optimizer_name: str,
    settings: dict,
    autocast_dtype: torch.dtype | None,
    in_backward: bool = False,
    accum: int = 1,
) -> dict[str, int | str]:
    saved, logits = _saved_by_forward(model, loss_fn, inputs, targets, autocast_dtype)
    backward_start = 2 * max(saved.storages.values(), default=0) + logits.numel() * 4
    with _without_checkpointing(model) as wrapped:
        if wrapped:  # backward recomputes one checkpointed block at a time: its activations are live then
            full, _ = _saved_by_forward(model, loss_fn, inputs, targets, autocast_dtype)
            backward_start = max(backward_start, (full.bytes - saved.bytes) // wrapped)
    parameters = parameter_bytes(model)
    state = optimizer_state_estimate(model, optimizer_name, settings)
    gradients = gradient_bytes(model, in_backward)
    largest = gradient_bytes(model, in_backward=True)  # the largest trainable parameter's bytes
    at_forward_end = saved.bytes + (gradients if accum > 1 else 0) + backward_start
    at_optimizer_step = gradients + 2 * largest  # a step's temporaries are per parameter (single-tensor)
    forward_peaks = at_forward_end >= at_optimizer_step
    return {
        "parameters": parameters,
        "gradients": gradients,
        "optimizer_state": state,
        "activations": saved.bytes,
        "transient": backward_start if forward_peaks else 2 * largest,
        "peak_at": "end of forward" if forward_peaks else "optimizer step",
        "total": parameters + state + max(at_forward_end, at_optimizer_step),
    }
