"""Built-in losses (registry `losses`): `factory(meta, /, *, settings) -> loss(outputs, targets)`.

Each returns the mean over samples (and tokens), so gradient accumulation that averages micro-batch
losses equals one large batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import Field, PositiveFloat
from torch.nn import functional as F

from mlrun.data.bundle import DataMeta
from mlrun.registry import losses

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@losses.register("cross_entropy", soft_labels=True, targets="classes")
def cross_entropy(
    meta: DataMeta,
    /,
    *,
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    class_weights: list[PositiveFloat] | None = None,
) -> Loss:
    """Softmax cross-entropy over the last dimension; targets are class ids or class probabilities.

    Args:
        label_smoothing: mass moved from the target class to all classes uniformly.
        class_weights: one weight per class, for imbalanced data.
    """
    if class_weights is not None and meta.num_classes and len(class_weights) != meta.num_classes:
        raise ValueError(f"class_weights has {len(class_weights)} entries for {meta.num_classes} classes")
    weight = torch.tensor(class_weights) if class_weights else None

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = outputs.flatten(0, -2)  # (N, classes); sequences (B, T, V) become (B*T, V)
        flat_targets = targets.flatten(0, -2) if targets.is_floating_point() else targets.flatten()
        w = weight.to(logits.device) if weight is not None else None
        return F.cross_entropy(logits.float(), flat_targets, weight=w, label_smoothing=label_smoothing)

    return loss


@losses.register("bce_with_logits", soft_labels=True, targets="binary")
def bce_with_logits(meta: DataMeta, /, *, pos_weight: PositiveFloat | None = None) -> Loss:
    """Binary cross-entropy on logits (one output per label; targets 0/1 or probabilities).

    Args:
        pos_weight: weight of positive examples, for imbalanced data.
    """

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pw = torch.tensor(pos_weight, device=outputs.device) if pos_weight else None
        return F.binary_cross_entropy_with_logits(outputs.float(), targets.float().view_as(outputs), pos_weight=pw)

    return loss


def _regression(fn: Callable[..., torch.Tensor], **kwargs) -> Loss:
    return lambda outputs, targets: fn(outputs.float(), targets.float().view_as(outputs), **kwargs)


@losses.register("mse", targets="values")
def mse(meta: DataMeta, /) -> Loss:
    """Mean squared error."""
    return _regression(F.mse_loss)


@losses.register("l1", targets="values")
def l1(meta: DataMeta, /) -> Loss:
    """Mean absolute error."""
    return _regression(F.l1_loss)


@losses.register("huber", targets="values")
def huber(meta: DataMeta, /, *, delta: PositiveFloat = 1.0) -> Loss:
    """Huber loss: squared below delta, linear above (robust to outliers).

    Args:
        delta: where the loss turns from quadratic to linear.
    """
    return _regression(F.huber_loss, delta=delta)
