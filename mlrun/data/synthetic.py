"""Synthetic data generated from the seed: classification, regression, images and tokens.

Each task has a learnable structure (a random teacher), so loss falls and accuracy rises; useful
for tests, benchmarks and profiling without any file.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, PositiveInt

from mlrun.data.bundle import ArrayDataset, DataMeta, DatasetBundle
from mlrun.data.splits import ValFraction
from mlrun.registry import datasets


@datasets.register("synthetic")
def synthetic(
    seed: int,
    /,
    *,
    task: Literal["classification", "regression", "images", "tokens"] = "classification",
    num_samples: Annotated[int, Field(ge=2)] = 1024,
    num_features: PositiveInt = 32,
    num_classes: Annotated[int, Field(ge=2)] = 4,
    image_size: PositiveInt = 16,
    channels: PositiveInt = 3,
    vocab_size: Annotated[int, Field(ge=2)] = 64,
    seq_len: PositiveInt = 32,
    noise: Annotated[float, Field(ge=0.0)] = 0.1,
    val_fraction: ValFraction = 0.2,
) -> DatasetBundle:
    """Random data with a learnable teacher.

    Args:
        task: classification (features), regression (features -> 1 value), images (C, H, W classes), tokens (LM).
        num_samples: samples in both splits together.
        num_features: features per sample (classification, regression).
        num_classes: classes (classification, images).
        image_size: height and width of images.
        channels: channels of images.
        vocab_size: token vocabulary (tokens).
        seq_len: tokens per sample (tokens).
        noise: standard deviation of the noise added to inputs or targets.
        val_fraction: share of samples held out for validation.
    """
    gen = torch.Generator().manual_seed(seed)
    if task == "classification":
        x = torch.randn(num_samples, num_features, generator=gen)
        teacher = torch.randn(num_features, num_classes, generator=gen)
        y = (x @ teacher + noise * torch.randn(num_samples, num_classes, generator=gen)).argmax(dim=1)
        meta = DataMeta(task="classification", input_shape=(num_features,), num_classes=num_classes)
    elif task == "regression":
        x = torch.randn(num_samples, num_features, generator=gen)
        teacher = torch.randn(num_features, 1, generator=gen) / num_features**0.5
        y = x @ teacher + noise * torch.randn(num_samples, 1, generator=gen)
        meta = DataMeta(task="regression", input_shape=(num_features,), output_dim=1)
    elif task == "images":
        shape = (channels, image_size, image_size)
        templates = torch.randn(num_classes, *shape, generator=gen)
        y = torch.randint(num_classes, (num_samples,), generator=gen)
        x = templates[y] + noise * 10 * torch.randn(num_samples, *shape, generator=gen)
        meta = DataMeta(task="classification", input_shape=shape, num_classes=num_classes)
    else:
        x, y = _markov_tokens(gen, num_samples, seq_len, vocab_size)
        meta = DataMeta(task="lm", input_shape=(seq_len,), vocab_size=vocab_size, seq_len=seq_len)
    n_val = max(1, int(num_samples * val_fraction))
    return DatasetBundle(ArrayDataset(x[n_val:], y[n_val:]), ArrayDataset(x[:n_val], y[:n_val]), meta)


def _markov_tokens(gen: torch.Generator, num_samples: int, seq_len: int, vocab_size: int):
    """Sequences from a random Markov chain in which each token has a few likely successors."""
    logits = 4.0 * torch.randn(vocab_size, vocab_size, generator=gen)
    probs = torch.softmax(logits, dim=1)
    tokens = torch.empty(num_samples, seq_len + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(vocab_size, (num_samples,), generator=gen)
    for t in range(seq_len):
        tokens[:, t + 1] = torch.multinomial(probs[tokens[:, t]], 1, generator=gen).squeeze(1)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
