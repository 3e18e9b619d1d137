"""Where the GPU time of a torch.profiler trace goes: busy vs idle, time by kernel family, top kernels.

    python scripts/gpu/kernels.py runs/gpt2_small/profile/trace   # the newest *.json there; JSON on stdout

Reads the chrome trace `mlrun profile --trace` writes. Kernel families are matched on kernel names
(cuBLAS/CUTLASS GEMMs, flash attention, Inductor's Triton kernels, fused AdamW, ...); idle time is
the part of the GPU's span between first and last kernel in which no kernel or copy runs, i.e. the
GPU waiting on the host (launch overhead, syncs, data).
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

FAMILIES = [  # first match wins: Inductor's fused kernels are named triton_* whatever they contain
    ("triton (torch.compile)", r"^triton_|^triton"),
    ("matmul (cuBLAS/CUTLASS)", r"gemm|cutlass|xmma|nvjet|cublas|wgmma|splitk|sm90_|sm80_|ampere_|hopper"),
    ("attention", r"flash|fmha|attention|attn|sdpa"),
    ("optimizer", r"adam|multi_tensor|foreach|fused_sgd"),
    ("softmax / cross-entropy", r"softmax|cross_entropy|nll_loss|log_softmax"),
    ("norm / reduction", r"norm|reduce|welford"),
    ("copy / cast", r"copy|cast|convert|to_copy|cat_"),
    ("elementwise", r"elementwise|vectorized|unrolled"),
]


def family(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in FAMILIES if re.search(pattern, lowered)), "other")


def newest_trace(folder: Path) -> Path:
    traces = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise SystemExit(f"kernels.py: no *.json trace in {folder}")
    return traces[-1]


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def summarize(path: Path, top: int = 15) -> dict:
    events = json.loads(path.read_text())["traceEvents"]
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"]
    copies = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("gpu_memcpy", "gpu_memset")]
    steps = {e["name"] for e in events if str(e.get("name", "")).startswith("ProfilerStep#")}
    if not kernels:
        return {"trace": str(path), "error": "no CUDA kernel in the trace"}
    intervals = [(e["ts"], e["ts"] + e["dur"]) for e in kernels + copies]
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    busy = busy_us(intervals)
    n = max(1, len(steps))
    by_family: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in kernels:
        by_family[family(e["name"])] += e["dur"]
        by_name[e["name"]][0] += 1
        by_name[e["name"]][1] += e["dur"]
    kernel_us = sum(by_family.values())
    ranked = sorted(by_name.items(), key=lambda item: -item[1][1])[:top]
    return {
        "trace": str(path),
        "steps": len(steps),
        "gpu_span_ms_per_step": round(span / n / 1e3, 3),
        "gpu_busy_ms_per_step": round(busy / n / 1e3, 3),
        "gpu_idle_fraction": round(1 - busy / span, 4) if span else 0.0,
        "copy_ms_per_step": round(sum(e["dur"] for e in copies) / n / 1e3, 3),
        "families": {
            label: {"ms_per_step": round(us / n / 1e3, 3), "share_of_kernel_time": round(us / kernel_us, 4)}
            for label, us in sorted(by_family.items(), key=lambda item: -item[1])
        },
        "top_kernels": [
            {
                "name": name[:160],
                "family": family(name),
                "calls_per_step": round(calls / n, 2),
                "ms_per_step": round(us / n / 1e3, 3),
                "share_of_kernel_time": round(us / kernel_us, 4),
            }
            for name, (calls, us) in ranked
        ],
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/gpu/kernels.py TRACE_DIR_OR_FILE")
    target = Path(sys.argv[1])
    print(json.dumps(summarize(target if target.is_file() else newest_trace(target)), indent=2))
