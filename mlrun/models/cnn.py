"""A small convolutional network: conv + batch norm + ReLU + pooling blocks, then a linear head."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, PositiveInt
from torch import nn

from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.models.heads import output_size
from mlrun.registry import models


class CNN(nn.Module):
    def __init__(self, in_channels: int, channels: list[int], out_features: int, dropout: float, pool_every: int):
        super().__init__()
        widths = [in_channels, *channels]
        self.blocks = nn.ModuleList()
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers = [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
            if (i + 1) % pool_every == 0:
                layers.append(nn.MaxPool2d(2))
            self.blocks.append(nn.Sequential(*layers))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], out_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@models.register("cnn")
def cnn(
    meta: DataMeta,
    /,
    *,
    channels: list[PositiveInt] = [32, 64],  # noqa: B006 - never mutated
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
    pool_every: PositiveInt = 1,
) -> nn.Module:
    """Conv-BN-ReLU blocks with 2x2 max pooling, global average pooling and a linear head.

    Args:
        channels: output channels of each conv block.
        dropout: dropout before the head.
        pool_every: max-pool after every this many blocks.
    """
    if len(meta.input_shape) != 3:
        raise UsageError(
            f"model 'cnn' needs (C, H, W) images, got samples of shape {meta.input_shape}; "
            "for digits set data.as_image: true"
        )
    pools = len(channels) // pool_every
    if min(meta.input_shape[1:]) < 2**pools:
        raise UsageError(
            f"model 'cnn': {pools} poolings shrink {meta.input_shape[1:]} images to nothing; "
            "raise model.pool_every or use fewer channels"
        )
    return CNN(meta.input_shape[0], list(channels), output_size(meta, "cnn"), dropout, pool_every)
