"""A CIFAR-style ResNet (He et al. 2016): 3 stages of basic blocks, depth = 6n + 2."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, PositiveInt
from torch import nn
from torch.nn import functional as F

from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.models.heads import output_size
from mlrun.registry import models


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, width: int, blocks_per_stage: int, out_features: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList()
        in_ch = width
        for stage in range(3):
            out_ch = width * 2**stage
            for i in range(blocks_per_stage):
                self.blocks.append(BasicBlock(in_ch, out_ch, stride=2 if (stage > 0 and i == 0) else 1))
                in_ch = out_ch
        self.head = nn.Linear(in_ch, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


@models.register("resnet")
def resnet(
    meta: DataMeta,
    /,
    *,
    depth: Annotated[int, Field(ge=8)] = 20,
    width: PositiveInt = 16,
) -> nn.Module:
    """ResNet-{depth} for small images (CIFAR-style); channels width, 2x, 4x over three stages.

    Args:
        depth: total layers, 6n + 2 (8, 14, 20, 32, 44, 56, 110).
        width: channels of the first stage.
    """
    if (depth - 2) % 6:
        raise UsageError(f"model.depth: resnet depth must be 6n + 2 (8, 14, 20, 32, ...), got {depth}")
    if len(meta.input_shape) != 3:
        raise UsageError(f"model 'resnet' needs (C, H, W) images, got samples of shape {meta.input_shape}")
    return ResNet(meta.input_shape[0], width, (depth - 2) // 6, output_size(meta, "resnet"))
