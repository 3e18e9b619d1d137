"""The figures every stage reports: size raw and entropy-coded, parameters, MACs, latency, metrics.

A result is measured as it would be deployed: int8 linear layers once a QAT stage has run
(`deploy_quantize`), fp32 otherwise. Latency is eager PyTorch on this machine's CPU at batch 1 and
64; `scripts/bench/compress.py` adds ONNX Runtime through `mlrun export`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from mlrun.compression.huffman import entropy_coded_bytes, packed_entropy_bytes
from mlrun.data.bundle import DataMeta
from mlrun.export.latency import steadiest, timed
from mlrun.export.quantize import apply_quantization
from mlrun.export.signature import InferenceModule
from mlrun.export.verify import batches, evaluate, first
from mlrun.models.packed_weights import PackedWeights


def deployable(model: nn.Module, meta: DataMeta, quantize: str | None) -> nn.Module:
    """`model(*inputs) -> logits` as it would be exported (a copy, int8 layers when `quantize`)."""
    module = InferenceModule(copy.deepcopy(model), meta).eval()
    return apply_quantization(module, quantize or "none", calibration=None)[0]


def stored_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a file of `model` holds (tied weights once)."""
    seen, tensors = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().cpu().contiguous()
    return tensors


def count_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one forward pass of one sample (dense kernels: zeros count)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(*first(inputs, 1))
    return counter.get_total_flops() // 2


def evaluate_deployed(model: nn.Module, parts, quantize: str | None) -> dict[str, float]:
    """Validation loss and metrics of `model` as deployed (int8 layers when `quantize`)."""
    return _evaluate(deployable(model, parts.bundle.meta, quantize), parts)


def _evaluate(module: nn.Module, parts) -> dict[str, float]:
    data, meta = parts.config.data, parts.bundle.meta
    batch = data.eval_batch_size or 4 * data.batch_size
    with torch.inference_mode():
        return evaluate(module, parts.bundle.val, meta, batch, parts.loss_fn, parts.metrics)


def measure(
    model: nn.Module,
    parts,
    quantize: str | None,
    packed: PackedWeights | None = None,
) -> dict[str, Any]:
    """Size, parameters, MACs, latency and validation metrics of `model` (parts: the run's components).

    With `packed` (a cluster stage's compressed.safetensors) the sizes are that file's: `bytes` its
    length on disk, `huffman_bytes` its symbol streams entropy-coded; otherwise those of the model's
    tensors as safetensors stores them (fp32, or int8 once quantized)."""
    meta, val = parts.bundle.meta, parts.bundle.val
    module = deployable(model, meta, quantize)
    stored = stored_tensors(module.model)
    params = list(model.parameters())
    inputs = next(batches(val, 64, meta))[0]
    metrics = _evaluate(module, parts)
    with torch.inference_mode():
        times = {n: steady_timed(module, first(inputs, n)) for n in (1, 64)}
    latency = {f"latency_ms_b{n}": t["ms"] for n, t in times.items()}
    latency["latency_spread"] = max(t["spread"] for t in times.values())  # (p90 - p10) / median, the worst
    return {
        "metrics": metrics,
        "parameters": sum(p.numel() for p in params),
        "nonzero_parameters": int(sum(int(torch.count_nonzero(p)) for p in params)),
        # Counted on the fp32 model: the same MACs as int8, whose torch._int_mm FlopCounter does not see.
        "macs": count_macs(InferenceModule(model, meta), inputs),
        "bytes": len(packed.to_bytes()) if packed else len(save(stored)),
        "huffman_bytes": packed_entropy_bytes(packed) if packed else entropy_coded_bytes(stored),
        "quantize": quantize or "none",
        **latency,
    }


def steady_timed(module, inputs, attempts: int = 3) -> dict[str, float]:
    """`timed`, re-timed while its spread says another process held the CPU (`steadiest`)."""
    return steadiest(lambda: timed(module, inputs), attempts)


def cpu_has_vnni() -> bool | None:
    """Whether the CPU has the int8 dot-product instructions torch._int_mm needs to beat fp32 (None: unknown)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next(line for line in info if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
