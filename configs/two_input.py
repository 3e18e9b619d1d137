"""Bring your own model and data: a two-input network (an image plus tabular features) on digits.

Loaded by configs/two_input.yaml as `configs.two_input:two_input_net` and
`configs.two_input:digits_two_views`; `package.module:function` resolves from the working directory.

The dataset yields batches of named tensors `{"image", "features", "labels"}`; the model takes the
features as keyword arguments (`model(image=..., features=...)`) and returns a dict with `logits`.
The default `supervised` objective hands `labels` to the loss and everything else to the model.
"""

from __future__ import annotations

import torch
from torch import nn

from mlrun.data.bundle import DataMeta, DatasetBundle, TensorDictDataset
from mlrun.data.splits import split_indices


def digits_two_views(seed: int, /, *, val_fraction: float = 0.2) -> DatasetBundle:
    """scikit-learn's 8x8 digits as a 1x8x8 image and 16 tabular features (ink per row and per column)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    features = torch.cat([images.sum(dim=3).flatten(1), images.sum(dim=2).flatten(1)], dim=1) / 8.0  # (N, 16)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, val_idx = split_indices(len(labels), val_fraction, seed, digits.target)

    def split(idx):
        return TensorDictDataset({"image": images[idx], "features": features[idx], "labels": labels[idx]})

    meta = DataMeta(task="classification", input_shape=(1, 8, 8), num_classes=10, input_names=("image", "features"))
    return DatasetBundle(split(train_idx), split(val_idx), meta)


class TwoInputNet(nn.Module):
    """A small CNN over the image and an MLP over the features, joined before the head."""

    def __init__(self, features: int, classes: int, hidden: int):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())  # (B, 256)
        self.tabular = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())  # (B, hidden)
        self.head = nn.Linear(16 * 4 * 4 + hidden, classes)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        joined = torch.cat([self.image(image), self.tabular(features)], dim=1)
        return {"logits": self.head(joined)}


def two_input_net(meta: DataMeta, /, *, hidden: int = 64) -> nn.Module:
    """The model factory: the data's metadata is a runtime input, settings come from YAML."""
    return TwoInputNet(features=16, classes=meta.num_classes, hidden=hidden)
