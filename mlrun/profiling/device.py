"""Peak arithmetic rate of the device, for MFU: a table for GPUs, a matmul measured on the spot for CPUs."""

from __future__ import annotations

import time

import torch

# Dense peak FLOP/s (no sparsity) by GPU name fragment and dtype; from the vendors' data sheets.
GPU_PEAKS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},  # SXM; PCIe parts are lower
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 31e12},
    "V100": {"bf16": 0.0, "fp16": 125e12, "fp32": 15.7e12},
    "T4": {"bf16": 0.0, "fp16": 65e12, "fp32": 8.1e12},
}


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(FLOP/s, where the figure comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, peaks in GPU_PEAKS.items():
            if fragment in name and peaks.get(precision):
                return peaks[precision], f"{name} data sheet ({precision})"
    rate = measured_matmul_rate(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    return rate, f"measured {precision} matmul on {device.type}"


def measured_matmul_rate(device: torch.device, dtype: torch.dtype, largest: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of square matmuls, timed for about `seconds`.

    The matrices grow from 128 until one product takes a tenth of `seconds` or `largest` is reached:
    a dtype the CPU only emulates (bf16 without AVX512-BF16 or AMX: ~2 s per 1024 x 1024 matmul on an
    AMD EPYC) is measured on small matrices, without first paying for a large product.
    """
    size = 128
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        start = time.perf_counter()
        a @ b  # also the warm-up
        synchronize(device)
        if time.perf_counter() - start >= seconds / 10 or size >= largest:
            break
        size *= 2
    repeats, start = 0, time.perf_counter()
    while repeats < 3 or time.perf_counter() - start < seconds:
        a @ b
        synchronize(device)
        repeats += 1
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
