"""One pass over the validation split: loss and metrics over every sample, gathered across processes.

The batches are scored here (a second forward where Accelerate padded the last one); the sums are
metrics.score_batches', which export verification uses too.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from mlrun.data.batch import batch_len, take
from mlrun.metrics import Metric, samples_in, score_batches
from mlrun.objectives.base import Objective


def real_rows(accelerator: Accelerator, batch) -> int | None:
    """Rows of this process's batch that are validation samples, or None when no process's batch is padded.

    Accelerate evens out the last batch across processes with samples from the start of the split;
    `gather_for_metrics` drops them by keeping the first `remainder` rows of the gathered batch
    (process 0's rows first). The same rule here counts every sample's loss exactly once.
    """
    state = accelerator.gradient_state
    rows = batch_len(batch)
    if accelerator.num_processes == 1 or not state.end_of_dataloader:
        return None
    if not 0 < state.remainder < rows * accelerator.num_processes:
        return None  # the same on every process: all run the second forward, or none does
    return max(0, min(rows, state.remainder - accelerator.process_index * rows))


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, model: nn.Module, loader: DataLoader, objective: Objective, metrics: list[Metric]
) -> dict:
    was_training = model.training
    model.eval()
    reduce = (lambda sums: accelerator.reduce(sums, reduction="sum")) if accelerator.num_processes > 1 else None
    batches = _scored(accelerator, model, loader, objective, metrics)
    results = score_batches(batches, metrics, accelerator.device, reduce)
    model.train(was_training)
    return results


def _scored(accelerator: Accelerator, model: nn.Module, loader: DataLoader, objective: Objective, metrics):
    """(mean loss, samples, gathered predictions, targets) of each validation batch, for score_batches."""
    for batch in loader:
        out = objective(model, batch)
        scored = out
        real = real_rows(accelerator, batch)
        if real is not None:
            # The loss is a mean over the whole batch, padding included: score the real rows alone. Every
            # process runs this second forward (one without real rows on its whole batch, then dropped), so
            # the collectives inside the model (DDP buffer broadcasts, FSDP all-gathers) stay paired.
            scored = objective(model, take(batch, real or batch_len(batch)))
        n = samples_in(scored.predictions, scored.targets) if real != 0 else 0
        predictions = targets = None
        if metrics and out.targets is not None:
            # gather_for_metrics drops the samples padded in to even out the last batch across processes.
            predictions, targets = accelerator.gather_for_metrics((out.predictions, out.targets))
        yield scored.loss, n, predictions, targets
