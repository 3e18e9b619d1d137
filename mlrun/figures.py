"""Which way a logged figure is better, from its name: one answer for train.best and early stopping
(their default mode), a study's direction warning and `mlrun compare`."""

from __future__ import annotations

from typing import Literal

SMALLER_IS_BETTER = ("loss", "error", "bytes", "latency", "_ms", "perplexity", "mse", "mae", "time", "memory")
LARGER_IS_BETTER = ("accuracy", "f1", "auc", "precision", "recall", "r2", "samples_per_s", "iou", "bleu")


def better(name: str) -> Literal["min", "max"] | None:
    """min when the name says smaller is better (val/loss), max when larger (val/accuracy), else None."""
    lowered = name.lower()
    if any(word in lowered for word in SMALLER_IS_BETTER):
        return "min"
    if any(word in lowered for word in LARGER_IS_BETTER):
        return "max"
    return None
