"""Checks an exported file against the fp32 PyTorch model: outputs, the validation metric, latency, size."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.data import Dataset, default_collate

from mlrun.metrics import Metric

Runner = Callable[[torch.Tensor], torch.Tensor]


def batches(dataset: Dataset, size: int, limit: int | None = None):
    total = len(dataset) if limit is None else min(limit, len(dataset))
    # A user's plain dataset (a TensorDataset) has no whole-batch __getitems__: collate its samples.
    fetch = getattr(dataset, "__getitems__", None) or (lambda idx: default_collate([dataset[i] for i in idx]))
    for start in range(0, total, size):
        yield fetch(list(range(start, min(start + size, total))))


def agreement(reference: Runner, candidate: Runner, inputs: torch.Tensor) -> dict[str, float]:
    """Largest absolute output difference and the share of equal predicted classes."""
    expected, got = reference(inputs).float(), candidate(inputs).float()
    same = (expected.argmax(-1) == got.argmax(-1)).float().mean() if expected.shape[-1] > 1 else torch.tensor(1.0)
    return {"max_abs_diff": float((expected - got).abs().max()), "class_agreement": float(same)}


def evaluate(run: Runner, dataset: Dataset, batch_size: int, loss_fn, metrics: list[Metric]) -> dict[str, float]:
    """val/loss and val/<metric> of `run` over the whole split (mirrors engine.evaluate, on CPU)."""
    for metric in metrics:
        metric.reset(torch.device("cpu"))
    loss_sum, count = 0.0, 0
    for inputs, targets in batches(dataset, batch_size):
        outputs = run(inputs).float()
        n = targets.numel() if not targets.is_floating_point() else targets.shape[0]
        loss_sum += float(loss_fn(outputs, targets)) * n
        count += n
        for metric in metrics:
            metric.update(outputs, targets)
    return {"val/loss": loss_sum / max(count, 1), **{f"val/{m.name}": m.compute() for m in metrics}}


def latency_ms(run: Runner, inputs: torch.Tensor, warmup: int = 5, repeats: int = 30) -> float:
    """Median wall time of one call, after warm-up."""
    for _ in range(warmup):
        run(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
