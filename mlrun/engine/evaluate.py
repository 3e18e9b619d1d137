"""One pass over the validation split: loss and metrics over every sample, gathered across processes."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from mlrun.metrics import Metric


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: nn.Module, loader: DataLoader, loss_fn, metrics: list[Metric]) -> dict:
    was_training = model.training
    model.eval()
    for metric in metrics:
        metric.reset(accelerator.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = 0
    for inputs, targets in loader:
        outputs = model(inputs)
        # gather_for_metrics drops the samples padded in to even out the last batch across processes.
        outputs, targets = accelerator.gather_for_metrics((outputs, targets))
        n = targets.numel() if not targets.is_floating_point() else targets.shape[0]
        loss_sum += loss_fn(outputs, targets).double() * n  # the loss is a mean: weight it by its size
        count += n
        for metric in metrics:
            metric.update(outputs, targets)
    model.train(was_training)
    results = {"val/loss": float(loss_sum / max(count, 1))}  # one sync per figure, once per evaluation
    results.update({f"val/{metric.name}": metric.compute() for metric in metrics})
    return results
