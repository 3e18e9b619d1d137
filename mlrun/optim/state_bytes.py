"""Optimizer state sizes, declared with each optimizer's registry entry (`state_bytes=`).

Each rule is `rule(params, settings) -> bytes` for the trainable parameters and the optimizer's YAML
settings; the memory estimate asks the entry instead of keeping a table of names.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

StateBytes = Callable[[list[nn.Parameter], dict], int]


def per_element(values: float) -> StateBytes:
    """`values` fp32 numbers per parameter element (AdamW: 2, the two moments)."""
    return lambda params, settings: int(values * 4 * sum(p.numel() for p in params))


def with_momentum(values: float, default_momentum: float) -> StateBytes:
    """`values` per element, plus one momentum buffer when `momentum` is set."""

    def rule(params, settings) -> int:
        extra = 1 if settings.get("momentum", default_momentum) else 0
        return per_element(values + extra)(params, settings)

    return rule


def factored(params, settings) -> int:
    """Adafactor: a row and a column vector of second moments per matrix, a full one per vector."""
    return sum(4 * (p.shape[0] + p.shape[1:].numel()) if p.ndim >= 2 else 4 * p.numel() for p in params)
