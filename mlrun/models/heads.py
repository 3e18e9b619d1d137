"""How wide a model's output must be for the data's task."""

from __future__ import annotations

import math

from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError


def output_size(meta: DataMeta, model: str) -> int:
    """Classes for classification, target width for regression, vocabulary for token models."""
    if meta.task == "classification":
        return meta.num_classes
    if meta.task == "regression":
        return meta.output_dim or 1
    if meta.vocab_size:
        return meta.vocab_size
    raise UsageError(f"model '{model}' cannot serve a '{meta.task}' dataset")


def flat_features(meta: DataMeta) -> int:
    return math.prod(meta.input_shape)
