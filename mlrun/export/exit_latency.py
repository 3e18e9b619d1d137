"""Latency of an early-exit model's thresholds against its full forward, for `mlrun eval`'s exit table.

Timed with export's machinery: every threshold's per-sample exit (`EarlyExits.infer`) in the same rounds
as the plain forward (`compare_latencies`), re-timed while the rounds disagree (`steadiest`), and flagged
past `SPREAD_LIMIT`. Each speedup is the full forward's ms over the row's ms, the very figures the table
prints: timed separately per row, a threshold's speedup had divided by a full-forward time the table
never showed (a row printed 2.882 ms against the full model's 0.351 with speedup 0.95).

Try: `mlrun eval runs/digits_early_exit`.
"""

from __future__ import annotations

import torch
from torch import nn

from mlrun.export.latency import SPREAD_LIMIT, compare_latencies, steadiest
from mlrun.models.exits import EarlyExits

# Fewer rounds and repeats than an export's check: a batch-1 call here runs every sample in turn (100
# forwards), once per threshold, and the timing must stay a small part of `mlrun eval`.
ROUNDS = 5
REPEATS = 2  # the fewest `timed` takes a median of


@torch.inference_mode()
def add_exit_latency(model: nn.Module, exits: EarlyExits, x: torch.Tensor, batch: int, rows: list[dict]) -> dict:
    """ms per sample at batch 1 and at `batch`, the speedup over the full forward and whether the timing
    was steady, into each row (the full forward's first); returns the table's worst spread and its trust."""
    full = model.__call__
    runs = [(lambda s, t=row["threshold"]: exits.infer(model, s, t)) for row in rows[1:]]
    spreads = [0.0] * len(rows)
    for key, inputs, wrap in (("b1", x, _one_by_one), ("batch", x[:batch], lambda run: run)):
        found = steadiest(
            lambda inputs=inputs, wrap=wrap: compare_latencies(
                wrap(full), [wrap(run) for run in runs], (inputs,), ROUNDS, REPEATS
            )
        )
        full_ms = found["reference_ms"] / len(inputs)
        rows[0].update({f"ms_per_sample_{key}": full_ms, f"speedup_{key}": 1.0})
        for i, (row, candidate) in enumerate(zip(rows[1:], found["candidates"]), start=1):
            ms = candidate["ms"] / len(inputs)
            row.update({f"ms_per_sample_{key}": ms, f"speedup_{key}": full_ms / ms})
            spreads[i] = max(spreads[i], candidate["spread"])
    for row, spread in zip(rows, spreads):
        row.update(latency_spread=spread, latency_trusted=spread <= SPREAD_LIMIT)
    return {"latency_spread": max(spreads), "latency_trusted": max(spreads) <= SPREAD_LIMIT}


def _one_by_one(run):
    """Batch 1: every sample in turn, so the exits taken are the data's mix, not one sample's."""

    def each(inputs: torch.Tensor) -> None:
        for j in range(len(inputs)):
            run(inputs[j : j + 1])

    return each
