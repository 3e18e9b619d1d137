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

from mlrun.callbacks import Callback


class ObjectiveOutput(NamedTuple):
    loss: torch.Tensor  # a scalar mean over samples (and tokens): what backward starts from
    predictions: torch.Tensor  # logits, for metrics and evaluation
    targets: torch.Tensor | None  # what the predictions are scored against (None: nothing to score)


Objective = Callable[[nn.Module, Any], ObjectiveOutput]


class ObjectiveWithParameters(Callback):
    """An objective that trains parameters of its own beside the model's (distill's TinyBERT projections).

    The engine calls `attach(model, example)` before it builds the optimizer (the parameters may take
    widths measured on `example`, the features of the first training samples), then treats the
    objective as a callback: `wrap_optimizer` adds its parameters as a group of their own, and its
    state_dict is checkpointed with the techniques' (under DCP, FSDP's and asynchronous checkpoints,
    `trained_module()` also names them and their optimizer state). They are not the
    model's: saved weights, exports and the model's parameter count never hold them (`validate --print`
    lists them as trained beside the model).
    """

    def attach(self, model: nn.Module, example: Any) -> None:
        raise NotImplementedError

    def trained_module(self) -> nn.Module:
        """The module that holds the parameters it trains (their names in distributed checkpoints)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, batch: Any) -> ObjectiveOutput:
        raise NotImplementedError


def trained_beside(objective: Objective) -> nn.Module | None:
    """The module of the parameters an objective trains beside the model, if it trains any."""
    return objective.trained_module() if isinstance(objective, ObjectiveWithParameters) else None
