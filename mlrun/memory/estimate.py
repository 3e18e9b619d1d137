"""Peak training memory predicted before training: bytes per parameter plus one micro-batch's activations.

The peak falls at one of two moments, and the estimate is the larger:
  end of forward:    parameters + optimizer state + activations saved for backward
                     (+ gradients when they persist across accumulated micro-batches)
                     + backward's first transient (one recomputed block under checkpointing,
                       else the gradient of the largest saved tensor and of the logits)
  optimizer step:    parameters + optimizer state + gradients + the step's per-parameter temporaries
Techniques that keep state of their own (EMA's fp32 copy of the weights) declare its size with their
registry entry (`state_bytes=`), as optimizers do; it is live for the whole step.
It predicts live tensor bytes, what `mlrun profile` measures (CUDA's allocator peak; the profiler's
memory timeline on CPU). A CPU process's resident memory is larger by what glibc keeps of freed memory.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mlrun.memory.measure import SavedActivations, gradient_bytes, parameter_bytes
from mlrun.optim.state_bytes import per_element


def optimizer_state_estimate(model: nn.Module, optimizer_name: str, settings: dict) -> int:
    """Bytes of optimizer state, from the rule the optimizer's registry entry declares (default: AdamW's)."""
    from mlrun.registry import optimizers

    rule = optimizers.trait(optimizer_name, "state_bytes") or per_element(2)
    return rule(model, settings)


def technique_state_estimate(model: nn.Module, techniques: list) -> int:
    """Bytes the techniques keep beside the model (EMA's average), from each entry's `state_bytes` rule."""
    from mlrun.registry import techniques as registry

    rules = [(registry.trait(t.name, "state_bytes"), t.settings) for t in techniques]
    return sum(rule(model, settings) for rule, settings in rules if rule is not None)


def frees_gradients(technique_names: list[str]) -> bool:
    """Whether a technique steps each parameter in backward and frees its gradient (no gradient memory)."""
    from mlrun.registry import techniques

    return any(techniques.trait(name, "frees_gradients", False) for name in technique_names)


def _saved_by_forward(model, objective, batch, autocast_dtype) -> tuple[SavedActivations, torch.Tensor]:
    device = next(model.parameters()).device
    with (
        SavedActivations(model) as saved,
        torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None),
    ):
        logits = objective(model, batch).predictions
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
    objective,
    batch,
    optimizer_name: str,
    settings: dict,
    autocast_dtype: torch.dtype | None,
    techniques: list = (),
    accum: int = 1,
) -> dict[str, int | str]:
    """The peak's parts in bytes (`total` the peak) for one micro-batch `batch` of the model as configured."""
    in_backward = frees_gradients([t.name for t in techniques])
    saved, logits = _saved_by_forward(model, objective, batch, autocast_dtype)
    backward_start = 2 * max(saved.storages.values(), default=0) + logits.numel() * 4
    with _without_checkpointing(model) as wrapped:
        if wrapped:  # backward recomputes one checkpointed block at a time: its activations are live then
            full, _ = _saved_by_forward(model, objective, batch, autocast_dtype)
            backward_start = max(backward_start, (full.bytes - saved.bytes) // wrapped)
    parameters = parameter_bytes(model)
    state = optimizer_state_estimate(model, optimizer_name, settings)
    kept_by_techniques = technique_state_estimate(model, list(techniques))
    gradients = gradient_bytes(model, in_backward)
    largest = gradient_bytes(model, in_backward=True)  # the largest trainable parameter's bytes
    at_forward_end = saved.bytes + (gradients if accum > 1 else 0) + backward_start
    at_optimizer_step = gradients + 2 * largest  # a step's temporaries are per parameter (single-tensor)
    forward_peaks = at_forward_end >= at_optimizer_step
    return {
        "parameters": parameters,
        "gradients": gradients,
        "optimizer_state": state,
        "technique_state": kept_by_techniques,
        "activations": saved.bytes,
        "transient": backward_start if forward_peaks else 2 * largest,
        "peak_at": "end of forward" if forward_peaks else "optimizer step",
        "total": parameters + state + kept_by_techniques + max(at_forward_end, at_optimizer_step),
    }
