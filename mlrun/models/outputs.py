"""Calling a model with a batch's features and finding the logits in whatever it returns.

A model may take one tensor (`model(x)`) or named tensors (`model(**features)`, the transformers
convention), and return a tensor, a tuple (logits first), a dict or a transformers `ModelOutput`
(both: the `logits` entry, else the first tensor that is not a loss). No wrapper is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def call_model(model: nn.Module, features: Any) -> Any:
    if isinstance(features, Mapping):
        return model(**features)
    return model(features)


def logits_of(outputs: Any) -> torch.Tensor:
    """The prediction tensor of a model's output."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):  # dict and transformers ModelOutput (an OrderedDict)
        if outputs.get("logits") is not None:
            return outputs["logits"]
        for key, value in outputs.items():
            if key != "loss" and isinstance(value, torch.Tensor):
                return value
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(
        f"cannot find the logits in a model output of type {type(outputs).__name__}: return a tensor, "
        "a tuple with the logits first, or a dict / ModelOutput with a 'logits' entry"
    )


def loss_of(outputs: Any) -> torch.Tensor:
    """The loss a model returned itself (transformers models given `labels`)."""
    if isinstance(outputs, Mapping) and outputs.get("loss") is not None:
        return outputs["loss"]
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor) and outputs[0].ndim == 0:
        return outputs[0]
    raise TypeError(
        f"objective 'model_loss' needs the model to return its loss (a dict or ModelOutput with 'loss', or a "
        f"tuple starting with a scalar); it returned {type(outputs).__name__}. Pass the targets in the batch "
        "as 'labels', or use objective: supervised with a loss."
    )
