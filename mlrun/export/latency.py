"""Wall-clock latency of a model call, and of a candidate against a reference, robust to a busy CPU.

Shared by `mlrun export` (the exported file against fp32 PyTorch), `mlrun compress` (each stage) and
`mlrun eval` (each early-exit threshold, export/exit_latency.py): one median, one spread, one rule for
when a figure is too noisy to trust (SPREAD_LIMIT) and re-timed (`steadiest`).
"""

from __future__ import annotations

import statistics
import time

import torch

from mlrun.export.signature import Runner

SPREAD_LIMIT = 0.25  # latency figures whose spread exceeds this share of the median are flagged, not trusted


def timed(run: Runner, inputs: tuple[torch.Tensor, ...], warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """Median wall time of one call in ms, after warm-up, and its spread: (p90 - p10) / median."""
    for _ in range(warmup):
        run(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(*inputs)
        times.append(time.perf_counter() - start)
    deciles = statistics.quantiles(times, n=10)
    median = statistics.median(times)
    return {"ms": median * 1e3, "spread": (deciles[-1] - deciles[0]) / median}


def latency_ms(run: Runner, inputs: tuple[torch.Tensor, ...], warmup: int = 5, repeats: int = 30) -> float:
    """Median wall time of one call, after warm-up."""
    return timed(run, inputs, warmup, repeats)["ms"]


def compare_latency(
    reference: Runner, candidate: Runner, inputs: tuple[torch.Tensor, ...], rounds: int = 7, repeats: int = 5
) -> dict[str, float]:
    """Both timed in alternating rounds, so another process busy on the CPU slows both alike (timed one
    after the other, a speedup moved 10x between identical runs): the median times, the median of the
    per-round speedups, and their spread ((max - min) / median)."""
    both = compare_latencies(reference, [candidate], inputs, rounds, repeats)
    return {"reference_ms": both["reference_ms"], **both["candidates"][0]}


def compare_latencies(
    reference: Runner, candidates: list[Runner], inputs: tuple[torch.Tensor, ...], rounds: int = 7, repeats: int = 5
) -> dict:
    """`compare_latency` for several candidates in the same rounds (each round times the reference, then
    every candidate): one reference time that every candidate's speedup divides, as a table prints it.
    Returns reference_ms, per candidate {ms, speedup, spread}, and the worst spread."""
    runs = [reference, *candidates]
    for run in runs:
        for _ in range(5):  # warm-up: first calls allocate, compile kernels, fill caches
            run(*inputs)
    ms: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for times, run in zip(ms, runs):
            times.append(timed(run, inputs, 0, repeats)["ms"])
    found = []
    for times in ms[1:]:
        speedups = [a / b for a, b in zip(ms[0], times)]
        speedup = statistics.median(speedups)
        found.append(
            {"ms": statistics.median(times), "speedup": speedup, "spread": (max(speedups) - min(speedups)) / speedup}
        )
    worst = max((c["spread"] for c in found), default=0.0)  # what `steadiest` re-times on
    return {"reference_ms": statistics.median(ms[0]), "candidates": found, "spread": worst}


def steadiest(measure, attempts: int = 3) -> dict:
    """`measure()` (a dict with a "spread"), again while that spread says another process held the CPU
    (up to `attempts` in all), keeping the steadiest: on a loaded 2-core machine a small model's median
    moved 100x in one timing, which made a compress search's speedups read 300x."""
    best = measure()
    for _ in range(attempts - 1):
        if best["spread"] <= SPREAD_LIMIT:
            break
        best = min(best, measure(), key=lambda t: t["spread"])
    return best
