"""Peak training memory predicted before training: bytes per parameter plus one micro-batch's activations.

peak = parameters + gradients + optimizer state (by rule, from the optimizer and the shapes)
       + activations saved by one forward pass + backward's transient buffers (+ fixed overhead)
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mlrun.profiling.memory import SavedActivations, gradient_bytes, parameter_bytes

# Optimizer state in fp32 values (4 bytes) per parameter element; low-bit AdamW stores 2 or 1 byte
# (plus a small per-block scale, counted as overhead).
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
FIXED_OVERHEAD_BYTES = 16 * 2**20  # allocator slack and autograd bookkeeping, measured on CPU runs


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
        SavedActivations() as saved,
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
) -> dict[str, int]:
    saved, logits = _saved_by_forward(model, loss_fn, inputs, targets, autocast_dtype)
    # Backward holds the gradient of the largest saved activation alongside the graph, twice over.
    transient = 2 * max(saved.storages.values(), default=0) + logits.numel() * 4
    with _without_checkpointing(model) as wrapped:
        if wrapped:  # backward recomputes one checkpointed block at a time: its activations are live then
            full, _ = _saved_by_forward(model, loss_fn, inputs, targets, autocast_dtype)
            transient += 2 * (full.bytes - saved.bytes) // wrapped  # and their gradients
    parts = {
        "parameters": parameter_bytes(model),
        "gradients": gradient_bytes(model, in_backward),
        "optimizer_state": optimizer_state_estimate(model, optimizer_name, settings),
        "activations": saved.bytes,
        "transient": transient,
        "overhead": FIXED_OVERHEAD_BYTES,
    }
    parts["total"] = sum(parts.values())
    return parts
