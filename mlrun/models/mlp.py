"""A multilayer perceptron over flattened inputs."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.models.heads import flat_features, output_size
from mlrun.registry import models

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden_sizes: list[int], out_features: int, dropout: float, activation: str):
        super().__init__()
        widths = [in_features, *hidden_sizes]
        self.blocks = nn.ModuleList(  # the repeated blocks techniques may wrap
            nn.Sequential(nn.Linear(a, b), ACTIVATIONS[activation](), nn.Dropout(dropout))
            for a, b in zip(widths[:-1], widths[1:])
        )
        self.head = nn.Linear(widths[-1], out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, features)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@models.register("mlp")
def mlp(
    meta: DataMeta,
    /,
    *,
    hidden_sizes: list[PositiveInt] = [256, 128],  # noqa: B006 - never mutated
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu",
) -> nn.Module:
    """Fully connected layers over the flattened input.

    Args:
        hidden_sizes: width of each hidden layer.
        dropout: dropout after each hidden layer.
        activation: relu | gelu | silu | tanh.
    """
    if meta.vocab_size:
        raise UsageError(
            "model 'mlp' takes numeric features, but this data gives token ids; use transformer_classifier "
            "(text classification) or gpt (language modelling)"
        )
    return MLP(flat_features(meta), list(hidden_sizes), output_size(meta, "mlp"), dropout, activation)
