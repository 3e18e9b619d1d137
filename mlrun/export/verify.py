"""Checks an exported file against the fp32 PyTorch model: outputs, the validation metric, latency, size.

`verify_artifact` is the check `mlrun export` runs; the pieces (batches, agreement, evaluate) also serve
`mlrun predict` and the compress stages' measurements; latency is timed by export/latency.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from mlrun.data.batch import split_batch
from mlrun.data.bundle import DataMeta, fetch_batch
from mlrun.export.formats import ExportFormat
from mlrun.export.latency import SPREAD_LIMIT, compare_latency
from mlrun.export.signature import InferenceModule, Runner, as_tensors
from mlrun.metrics import Metric, samples_in, score_batches


def batches(dataset: Dataset, size: int, meta: DataMeta, limit: int | None = None):
    """(positional inputs, targets) of consecutive batches, as an exported model takes them."""
    total = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, total, size):
        features, targets = split_batch(fetch_batch(dataset, range(start, min(start + size, total))))
        yield as_tensors(features, meta), targets


def first(inputs: tuple[torch.Tensor, ...], count: int) -> tuple[torch.Tensor, ...]:
    return tuple(t[:count] for t in inputs)


def agreement(reference: Runner, candidate: Runner, inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Largest absolute output difference and the share of equal predicted classes."""
    expected, got = reference(*inputs).float(), candidate(*inputs).float()
    same = (expected.argmax(-1) == got.argmax(-1)).float().mean() if expected.shape[-1] > 1 else torch.tensor(1.0)
    return {"max_abs_diff": float((expected - got).abs().max()), "class_agreement": float(same)}


def evaluate(
    run: Runner, dataset: Dataset, meta: DataMeta, batch_size: int, loss_fn, metrics: list[Metric]
) -> dict[str, float]:
    """val/loss and val/<metric> of `run` over the whole split, on CPU (the arithmetic of engine.evaluate)."""

    def scored():
        for inputs, targets in batches(dataset, batch_size, meta):
            outputs = run(*inputs).float()
            yield loss_fn(outputs, targets), samples_in(outputs, targets), outputs, targets

    return score_batches(scored(), metrics, torch.device("cpu"))


def dense_fp32_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's tensors stored dense, floating ones as fp32 (what an fp32 export holds)."""
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values())


def verify_artifact(trained, spec: ExportFormat, folder: Path, info: dict) -> dict:
    """Load the file with its runtime; compare outputs, metric, latency and size with fp32 eager PyTorch."""
    parts = trained.parts
    meta = parts.bundle.meta
    reference = InferenceModule(parts.model, meta)

    def reference_run(*inputs):
        with torch.inference_mode():
            return reference(*inputs)

    candidate = spec.load(folder / info["file"])
    val, eval_size = parts.bundle.val, parts.config.data.eval_batch_size or 256
    inputs = next(batches(val, 256, meta))[0]
    fp32 = evaluate(reference_run, val, meta, eval_size, parts.loss_fn, parts.metrics)
    got = evaluate(candidate, val, meta, eval_size, parts.loss_fn, parts.metrics)
    key = f"val/{parts.metrics[0].name}" if parts.metrics else "val/loss"
    big = first(inputs, 64)
    b1, b64 = (
        compare_latency(reference_run, candidate, first(inputs, 1)),
        compare_latency(reference_run, candidate, big),
    )
    return {
        **agreement(reference_run, candidate, inputs),
        "metric": key,
        "metric_fp32": fp32[key],
        "metric_export": got[key],
        "metric_change": got[key] - fp32[key],
        "metrics_export": got,
        # Against the model's dense fp32 tensors, not the run's weights file: a compress stage's file
        # (bit-packed clusters, sparse indices) is far smaller than any dense export of the same model.
        "size_ratio_to_fp32": info["file_bytes"] / dense_fp32_bytes(parts.model),
        "batch_for_latency": len(big[0]),
        "latency_ms_b1_fp32": b1["reference_ms"],
        "latency_ms_b1": b1["ms"],
        "latency_ms_b64_fp32": b64["reference_ms"],
        "latency_ms_b64": b64["ms"],
        "speedup_b1": b1["speedup"],
        "speedup_b64": b64["speedup"],
        # Speedups from alternating rounds; their spread says whether the CPU was quiet enough to trust them.
        "speedup_spread_b1": b1["spread"],
        "speedup_spread_b64": b64["spread"],
        "latency_trusted": max(b1["spread"], b64["spread"]) <= SPREAD_LIMIT,
        "threads": torch.get_num_threads(),
    }
