"""What every objective returns, and the type the engine calls.

An objective factory is `factory(loss_fn, meta, /, *, settings) -> Objective`, where `loss_fn` is the
configured `loss:` and `meta` the data's metadata. The objective is called once per micro-batch by
the training step, evaluation, profiling and the memory estimate alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn


class ObjectiveOutput(NamedTuple):
    loss: torch.Tensor  # a scalar mean over samples (and tokens): what backward starts from
    predictions: torch.Tensor  # logits, for metrics and evaluation
    targets: torch.Tensor | None  # what the predictions are scored against (None: nothing to score)


Objective = Callable[[nn.Module, Any], ObjectiveOutput]
