"""Image classifiers from torchvision and timm, built by name without pretrained downloads.

    model: {name: timm, arch: resnet18}          # pretrained weights come from init_from (a local file)
    model: {name: torchvision, arch: resnet18}

Both libraries are optional and are imported only when such a model is built. torchvision's
wheels must match the installed torch build exactly (a CPU torch from another index does not load
a registry torchvision), and timm imports torchvision; where they cannot be imported the entry
says so with exit 2.
"""

from __future__ import annotations

import importlib

from torch import nn

from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.models.heads import output_size
from mlrun.registry import models


def _library(name: str):
    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a torchvision built for another torch failing to load its ops
        raise UsageError(
            f"model '{name}' needs the {name} package, which cannot be imported here ({type(exc).__name__}: {exc}). "
            f"Install a {name} built for torch as installed (pip install {name}), or use mlrun's own models."
        ) from None


def _image_meta(meta: DataMeta, name: str) -> int:
    if len(meta.input_shape) != 3:
        raise UsageError(f"model '{name}' needs (C, H, W) images, got samples of shape {meta.input_shape}")
    return meta.input_shape[0]


@models.register("torchvision")
def torchvision_model(meta: DataMeta, /, *, arch: str) -> nn.Module:
    """A torchvision classification architecture (randomly initialised; load weights with init_from).

    Args:
        arch: a torchvision.models name, e.g. resnet18, mobilenet_v3_small, vit_b_16.
    """
    torchvision = _library("torchvision")
    channels = _image_meta(meta, "torchvision")
    if channels != 3:
        raise UsageError(f"model 'torchvision' expects 3-channel images, the data has {channels}")
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=output_size(meta, "torchvision"))
    except ValueError as exc:
        raise UsageError(f"model.arch: {exc}") from None


@models.register("timm")
def timm_model(meta: DataMeta, /, *, arch: str, drop_rate: float = 0.0) -> nn.Module:
    """A timm architecture (randomly initialised; load weights with init_from).

    Args:
        arch: a timm model name, e.g. resnet18, vit_tiny_patch16_224, efficientnet_b0.
        drop_rate: dropout before the classifier.
    """
    timm = _library("timm")
    channels = _image_meta(meta, "timm")
    if not timm.is_model(arch):
        raise UsageError(f"model.arch: timm has no model '{arch}' (timm.list_models() lists them)")
    return timm.create_model(
        arch, pretrained=False, num_classes=output_size(meta, "timm"), in_chans=channels, drop_rate=drop_rate
    )
