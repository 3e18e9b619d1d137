"""The interface of an exported model: positional tensors in (named after the data's inputs), logits out.

A trained model may take one tensor or named tensors and return a tensor, a dict or a transformers
ModelOutput; inference formats want plain tensors both ways. `InferenceModule` is that adapter,
used for every format (so reloading a safetensors export rebuilds the same structure).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mlrun.data.bundle import DataMeta
from mlrun.models.outputs import call_model, logits_of

Runner = Callable[..., torch.Tensor]  # run(*inputs) -> logits: an exported file loaded back, or the fp32 model


def input_names(meta: DataMeta) -> tuple[str, ...]:
    """The exported inputs: the data's named tensors, or one tensor called `inputs`."""
    return meta.input_names or ("inputs",)


def as_tensors(features, meta: DataMeta) -> tuple[torch.Tensor, ...]:
    """A batch's features as the exported model's positional inputs."""
    return tuple(features[name] for name in meta.input_names) if meta.input_names else (features,)


class InferenceModule(nn.Module):
    """`forward(*inputs) -> logits` around a model with any input and output form."""

    def __init__(self, model: nn.Module, meta: DataMeta):
        super().__init__()
        self.model, self.names = model, meta.input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.names, inputs)) if self.names else inputs[0]
        return logits_of(call_model(self.model, features))
