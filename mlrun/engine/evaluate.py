"""One pass over the validation split: loss and metrics over every sample, gathered across processes."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from mlrun.metrics import Metric
from mlrun.objectives.base import Objective


def samples_in(predictions: torch.Tensor, targets: torch.Tensor | None) -> int:
    """What a mean loss averages over: class ids and tokens count one each, other targets one per row."""
    if targets is None:
        return len(predictions)
    return targets.numel() if not targets.is_floating_point() else targets.shape[0]


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, model: nn.Module, loader: DataLoader, objective: Objective, metrics: list[Metric]
) -> dict:
    was_training = model.training
    model.eval()
    for metric in metrics:
        metric.reset(accelerator.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        out = objective(model, batch)
        n = samples_in(out.predictions, out.targets)
        loss_sum += out.loss.double() * n  # the loss is a mean: weight it by its size
        count += n
        if metrics and out.targets is not None:
            # gather_for_metrics drops the samples padded in to even out the last batch across processes.
            predictions, targets = accelerator.gather_for_metrics((out.predictions, out.targets))
            for metric in metrics:
                metric.update(predictions, targets)
    if accelerator.num_processes > 1:
        loss_sum, count = accelerator.reduce(torch.stack([loss_sum, count]), reduction="sum")
    model.train(was_training)
    results = {"val/loss": float(loss_sum / count.clamp(min=1))}  # one sync per figure, once per evaluation
    results.update({f"val/{metric.name}": metric.compute() for metric in metrics})
    return results
