"""New samples prepared for the model: what every input reader of `mlrun predict` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Inputs:
    dataset: Any  # prepared samples (ArrayDataset, or TensorDictDataset of named tensors); zero targets when unlabelled
    ids: list[dict[str, Any]]  # per sample: {"row": 3} / {"file": "x.png"} / {"line": 7}
    labelled: bool
