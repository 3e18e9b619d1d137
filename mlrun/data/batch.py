"""What a batch is: `(inputs, targets)` or a mapping of named tensors (`{"input_ids": ..., "labels": ...}`).

Only objectives, metrics and export look inside a batch; the loop moves it, counts it and hands it
on. The helpers here are the one place that knows both forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

import torch

Batch = Union[tuple[torch.Tensor, ...], Mapping[str, torch.Tensor]]
Features = Union[torch.Tensor, Mapping[str, torch.Tensor]]

TARGET_KEY = "labels"  # the transformers convention for a mapping batch's targets


def batch_len(batch: Batch) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    first = next(iter(batch.values())) if isinstance(batch, Mapping) else batch[0]
    return len(first)


def split_batch(batch: Batch, target_key: str = TARGET_KEY) -> tuple[Features, torch.Tensor | None]:
    """(what the model takes, the targets): `(x, y)` -> (x, y); a mapping -> (every other key, batch[target_key])."""
    if isinstance(batch, Mapping):
        features = {k: v for k, v in batch.items() if k != target_key}
        return features, batch.get(target_key)
    return batch[0], batch[1] if len(batch) > 1 else None


def move_batch(batch: Batch, device: torch.device) -> Batch:
    """A batch on `device` (non-blocking: pinned host memory overlaps the copy with compute)."""
    if isinstance(batch, Mapping):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return tuple(t.to(device, non_blocking=True) for t in batch)


def take(batch: Batch, count: int) -> Batch:
    """The first `count` samples of a batch."""
    if isinstance(batch, Mapping):
        return {k: v[:count] for k, v in batch.items()}
    return tuple(t[:count] for t in batch)
