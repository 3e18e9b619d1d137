"""Early-exit evaluation: accuracy, mean depth and latency at each confidence threshold (`mlrun eval`).

One full forward per validation batch yields every exit's logits; each threshold's outcome is then
computed exactly (a sample takes the first exit whose softmax confidence reaches it, else the final
head). Latency is measured with the real per-sample early exit (`EarlyExits.infer`: the deeper
blocks run only on the samples still in the network) against the plain forward, at batch 1 and
at the evaluation batch size, by the timer the caller passes (`mlrun eval` passes export's
`add_exit_latency`: models do not import the export machinery).
"""

from __future__ import annotations

import torch
from torch import nn

from mlrun.data.batch import split_batch
from mlrun.models.exits import EarlyExits, find_exits


@torch.no_grad()
def evaluate_exits(
    model: nn.Module, loader, thresholds: list[float] | None, add_latency=None, latency_samples: int = 100
) -> dict | None:
    """The early-exit report of `model` (None when it has no exits); `thresholds` default to the technique's.

    add_latency(model, exits, inputs, batch, rows) times each row and returns the report's latency keys.
    """
    exits = find_exits(model)
    if exits is None:
        return None
    thresholds = list(exits.thresholds) if thresholds is None else thresholds
    was_training = model.training
    model.eval()
    logits, targets, inputs = [], [], []
    for batch in loader:
        x, y = split_batch(batch)  # a tensor, or named tensors (text: input_ids, attention_mask)
        logits.append(exits.collect(model, x))
        targets.append(y)
        inputs.append(x)
    model.train(was_training)
    stacked = torch.stack([torch.cat([batch[i] for batch in logits]) for i in range(len(logits[0]))])  # (E+1, N, C)
    y = torch.cat(targets)
    confidence = stacked.softmax(dim=-1).amax(dim=-1)  # (E+1, N)
    correct = stacked.argmax(dim=-1) == y  # (E+1, N)
    depths = torch.tensor([exits.depth(i) for i in range(len(stacked))])
    n = len(y)
    rows = [{"threshold": None, "accuracy": float(correct[-1].float().mean()), "mean_depth": 1.0}]
    for threshold in thresholds:
        passes = confidence >= threshold
        passes[-1] = True  # the final head takes whoever is left
        first = passes.int().argmax(dim=0)  # (N,) the first exit each sample may take
        rows.append(
            {
                "threshold": threshold,
                "accuracy": float(correct[first, torch.arange(n)].float().mean()),
                "mean_depth": float(depths[first].mean()),
                "exit_fractions": (torch.bincount(first, minlength=len(stacked)).float() / n).tolist(),
            }
        )
    timed = all(isinstance(x, torch.Tensor) for x in inputs)
    latency = {}
    if timed:  # the per-sample exit (EarlyExits.infer) narrows one input tensor as samples leave
        x = torch.cat(inputs)
        add_flops(model, exits, x, rows)
        if add_latency is not None:
            latency = add_latency(model, exits, x[:latency_samples], loader.batch_size or 256, rows)
    return {
        "exits_after_blocks": list(exits.after),
        "blocks": exits.num_blocks,
        "exit_accuracy": [float(c.float().mean()) for c in correct],  # each exit alone, then the final head
        "samples": n,
        "thresholds": rows,
        # Named inputs (a text model's ids and mask) are not narrowed per sample yet: FLOPs and latency
        # are left out, accuracy, depth and exit shares are exact.
        "timed": timed,
        **latency,
    }


def add_flops(model: nn.Module, exits: EarlyExits, x: torch.Tensor, rows: list[dict]) -> None:
    """Share of the full forward's FLOPs each threshold spends (exit heads included), counted as they run."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(run) -> int:
        with FlopCounterMode(display=False) as counter:
            run()
        return counter.get_total_flops()

    full = flops(lambda: model(x))
    for row in rows:
        spent = full if row["threshold"] is None else flops(lambda t=row["threshold"]: exits.infer(model, x, t))
        row.update(flops_fraction=spent / full, flops_speedup=full / spent)
