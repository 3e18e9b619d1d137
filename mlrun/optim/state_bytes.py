"""Optimizer state sizes, declared with each optimizer's registry entry (`state_bytes=`).

Each rule is `rule(model, settings) -> bytes` for the model's trainable parameters and the optimizer's
YAML settings (the model, not a list of parameters, because some optimizers treat parameters by their
place in it: Muon keeps one buffer for hidden matrices and AdamW's two for the rest). The memory
estimate asks the entry instead of keeping a table of names.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

StateBytes = Callable[[nn.Module, dict], int]


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer holds state for (tied weights once)."""
    return [p for p in model.parameters() if p.requires_grad]


def per_element(values: float) -> StateBytes:
    """`values` fp32 numbers per parameter element (AdamW: 2, the two moments)."""
    return lambda model, settings: int(values * 4 * sum(p.numel() for p in trainable(model)))


def with_momentum(values: float, default_momentum: float) -> StateBytes:
    """`values` per element, plus one momentum buffer when `momentum` is set."""

    def rule(model, settings) -> int:
        extra = 1 if settings.get("momentum", default_momentum) else 0
        return per_element(values + extra)(model, settings)

    return rule


def factored(model, settings) -> int:
    """Adafactor: a row and a column vector of second moments per matrix, a full one per vector."""
    return sum(4 * (p.shape[0] + p.shape[1:].numel()) if p.ndim >= 2 else 4 * p.numel() for p in trainable(model))
