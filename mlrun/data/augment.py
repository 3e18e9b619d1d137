"""Training-split augmentation (registry `augmentations`, config `data.augment`), in torch, per batch.

Each entry is `factory(meta, /, *, settings) -> step(inputs, targets, generator)`, applied to whole
batches after they reach the device, so it costs one vectorised kernel per batch on a GPU and never
runs in loader workers. Every random draw comes from a CPU generator seeded by (seed, epoch, batch):
an interrupted and resumed run, with any number of loader workers, sees exactly the same augmented
batches as an uninterrupted one. Validation and evaluation never see augmentation.

Images are (B, C, H, W) after normalisation; steps that think in pixels (jitter) undo and redo it
with the data's own statistics. mixup and cutmix turn class ids into class probabilities, which
cross_entropy and bce_with_logits accept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch.nn import functional as F

from mlrun.data.batch import TARGET_KEY
from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.registry import augmentations

Step = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class Augmentations:
    """The configured steps in order, with the generator seeded for each (epoch, global batch)."""

    def __init__(self, steps: list[Step], seed: int, field: str | None = None):
        self.steps, self.seed, self.field = steps, seed, field
        self.soft_labels = any(getattr(step, "soft_labels", False) for step in steps)

    def __call__(self, batch, epoch: int, position: int):
        """The batch augmented: `(inputs, targets)`, or a mapping whose `field` and `labels` are changed."""
        generator = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + position) % 2**63)
        mapping = isinstance(batch, dict)
        inputs, targets = (batch[self.field], batch.get(TARGET_KEY)) if mapping else batch
        for step in self.steps:
            inputs, targets = step(inputs, targets, generator)
        if mapping:
            return {**batch, self.field: inputs, **({TARGET_KEY: targets} if targets is not None else {})}
        return inputs, targets


def _uniform(generator, size, low: float, high: float, device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(size, generator=generator)).to(device, non_blocking=True)


def _chosen(generator, batch: int, p: float, device) -> torch.Tensor:
    """A (B,) boolean mask: which samples the step applies to."""
    return (torch.rand(batch, generator=generator) < p).to(device, non_blocking=True)


def _needs_images(meta: DataMeta, name: str) -> None:
    if len(meta.input_shape) != 3:
        raise UsageError(
            f"data.augment: '{name}' works on (C, H, W) images, but this data gives samples of shape "
            f"{meta.input_shape}; use it with image data (image_folder, npz of images, digits as_image)."
        )


def _where(mask: torch.Tensor, changed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *[1] * (original.ndim - 1)), changed, original)


@augmentations.register("hflip")
def hflip(meta: DataMeta, /, *, p: Probability = 0.5) -> Step:
    """Horizontal flip.

    Args:
        p: probability per sample.
    """
    _needs_images(meta, "hflip")
    return lambda x, y, g: (_where(_chosen(g, len(x), p, x.device), x.flip(-1), x), y)


@augmentations.register("random_crop")
def random_crop(meta: DataMeta, /, *, padding: PositiveInt = 4, reflect: bool = False) -> Step:
    """Pad every side, then crop back to the original size at a random offset per sample.

    Args:
        padding: pixels added on each side (the largest shift).
        reflect: pad by reflecting the border instead of with zeros (the mean after normalisation).
    """
    _needs_images(meta, "random_crop")

    def step(x, y, g):
        b, _, h, w = x.shape
        padded = F.pad(x, [padding] * 4, mode="reflect" if reflect else "constant")
        top = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        left = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[batch, channels, rows, cols], y

    return step


def _affine_step(degrees: float, scale: tuple[float, float], translate: float, p: float) -> Step:
    def step(x, y, g):
        b = len(x)
        angle = _uniform(g, b, -degrees, degrees, x.device) * (math.pi / 180)
        zoom = _uniform(g, b, scale[0], scale[1], x.device)
        shift = _uniform(g, (b, 2), -translate, translate, x.device) * 2  # grid units span [-1, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return _where(_chosen(g, b, p, x.device), moved, x), y

    return step


@augmentations.register("rotate")
def rotate(meta: DataMeta, /, *, degrees: PositiveFloat = 15.0, p: Probability = 1.0) -> Step:
    """Rotation by a random angle in [-degrees, degrees] about the centre (bilinear).

    Args:
        degrees: largest rotation either way.
        p: probability per sample.
    """
    _needs_images(meta, "rotate")
    return _affine_step(degrees, (1.0, 1.0), 0.0, p)


@augmentations.register("affine")
def affine(
    meta: DataMeta,
    /,
    *,
    degrees: Annotated[float, Field(ge=0.0)] = 0.0,
    scale: tuple[PositiveFloat, PositiveFloat] = (0.9, 1.1),
    translate: Fraction = 0.1,
    p: Probability = 1.0,
) -> Step:
    """Random rotation, scaling and translation in one resampling.

    Args:
        degrees: largest rotation either way.
        scale: range of the zoom factor, [low, high].
        translate: largest shift as a fraction of width and height.
        p: probability per sample.
    """
    _needs_images(meta, "affine")
    if scale[0] > scale[1]:
        raise UsageError(f"data.augment: affine scale must be [low, high], got {list(scale)}")
    return _affine_step(degrees, scale, translate, p)


@augmentations.register("color_jitter")
def color_jitter(
    meta: DataMeta, /, *, brightness: Fraction = 0.2, contrast: Fraction = 0.2, p: Probability = 1.0
) -> Step:
    """Brightness and contrast scaled by random factors in [1 - x, 1 + x], in pixel space.

    Args:
        brightness: largest relative change of brightness (pixels multiplied by the factor).
        contrast: largest relative change of contrast (pixels blended with each image's channel means).
        p: probability per sample.
    """
    _needs_images(meta, "color_jitter")
    channels = meta.input_shape[0]
    mean = torch.tensor(meta.pixel_mean or [0.0] * channels).view(1, -1, 1, 1)
    std = torch.tensor(meta.pixel_std or [1.0] * channels).view(1, -1, 1, 1)

    def step(x, y, g):
        b = len(x)
        m, s = mean.to(x.device, x.dtype), std.to(x.device, x.dtype)
        pixels = x * s + m
        bright = _uniform(g, (b, 1, 1, 1), 1 - brightness, 1 + brightness, x.device).to(x.dtype)
        contr = _uniform(g, (b, 1, 1, 1), 1 - contrast, 1 + contrast, x.device).to(x.dtype)
        pixels = pixels * bright
        centre = pixels.mean(dim=(2, 3), keepdim=True)
        pixels = (centre + (pixels - centre) * contr).clamp(0.0, 1.0)
        return _where(_chosen(g, b, p, x.device), (pixels - m) / s, x), y

    return step


@augmentations.register("gaussian_noise")
def gaussian_noise(meta: DataMeta, /, *, std: PositiveFloat = 0.05, p: Probability = 1.0) -> Step:
    """Adds zero-mean gaussian noise to the inputs (any float inputs: images or features).

    Args:
        std: standard deviation of the noise, in input units.
        p: probability per sample.
    """

    def step(x, y, g):
        noise = (torch.randn(x.shape, generator=g) * std).to(x.device, x.dtype)
        return _where(_chosen(g, len(x), p, x.device), x + noise, x), y

    return step


def _box_masks(g, b: int, h: int, w: int, box_h: torch.Tensor, box_w: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) masks on the CPU, True inside a box of the given sizes at a random centre per sample."""
    cy = torch.randint(0, h, (b,), generator=g)
    cx = torch.randint(0, w, (b,), generator=g)
    top, left = (cy - box_h // 2).clamp(0, h), (cx - box_w // 2).clamp(0, w)
    bottom, right = (cy + (box_h + 1) // 2).clamp(0, h), (cx + (box_w + 1) // 2).clamp(0, w)
    rows, cols = torch.arange(h), torch.arange(w)
    inside_rows = (rows >= top[:, None]) & (rows < bottom[:, None])  # (B, H)
    inside_cols = (cols >= left[:, None]) & (cols < right[:, None])  # (B, W)
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


@augmentations.register("cutout")
def cutout(meta: DataMeta, /, *, size: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25, p: Probability = 1.0) -> Step:
    """Sets a square patch at a random centre to zero (the mean after normalisation).

    Args:
        size: side of the patch as a fraction of the image's shorter side.
        p: probability per sample.
    """
    _needs_images(meta, "cutout")

    def step(x, y, g):
        b, _, h, w = x.shape
        side = torch.full((b,), max(1, round(size * min(h, w))))
        mask = _box_masks(g, b, h, w, side, side) & _chosen(g, b, p, "cpu").view(-1, 1, 1, 1)
        return x.masked_fill(mask.to(x.device, non_blocking=True), 0.0), y

    return step


def _soft_targets(y: torch.Tensor, meta: DataMeta) -> torch.Tensor:
    if y.is_floating_point():
        return y
    return F.one_hot(y, meta.num_classes).float()


def _beta(g: torch.Generator, alpha: float) -> float:
    """One draw of Beta(alpha, alpha) from the step's generator (torch's Beta takes no generator)."""
    import numpy as np

    return float(np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g))).beta(alpha, alpha))


def _mix(meta: DataMeta, name: str):
    if meta.task == "lm":
        raise UsageError(f"data.augment: '{name}' mixes whole samples and their labels; it does not apply to LM data")


@augmentations.register("mixup")
def mixup(meta: DataMeta, /, *, alpha: PositiveFloat = 0.2, p: Probability = 1.0) -> Step:
    """Blends each sample and its label with another sample of the batch (Zhang et al., 2018).

    Args:
        alpha: Beta(alpha, alpha) draws the blend weight; small values stay close to one sample.
        p: probability per batch.
    """
    _mix(meta, "mixup")

    def step(x, y, g):
        if torch.rand(1, generator=g).item() >= p:
            return x, y
        lam = _beta(g, alpha)
        perm = torch.randperm(len(x), generator=g).to(x.device)
        soft = _soft_targets(y, meta)
        return lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]

    step.soft_labels = True
    return step


@augmentations.register("cutmix")
def cutmix(meta: DataMeta, /, *, alpha: PositiveFloat = 1.0, p: Probability = 1.0) -> Step:
    """Pastes a box from another sample of the batch; labels mix by the box's area (Yun et al., 2019).

    Args:
        alpha: Beta(alpha, alpha) draws the share of the image kept.
        p: probability per batch.
    """
    _needs_images(meta, "cutmix")
    _mix(meta, "cutmix")

    def step(x, y, g):
        if torch.rand(1, generator=g).item() >= p:
            return x, y
        b, _, h, w = x.shape
        cut = math.sqrt(1.0 - _beta(g, alpha))
        box_h, box_w = torch.tensor([round(h * cut)]), torch.tensor([round(w * cut)])
        mask = _box_masks(g, 1, h, w, box_h, box_w)  # one box for the batch, as in the paper
        perm = torch.randperm(b, generator=g).to(x.device)
        lam = 1.0 - mask.sum().item() / (h * w)  # the area really pasted (a box at the border is clipped)
        soft = _soft_targets(y, meta)
        return torch.where(mask.to(x.device), x[perm], x), lam * soft + (1 - lam) * soft[perm]

    step.soft_labels = True
    return step
