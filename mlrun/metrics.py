"""Built-in metrics (registry `metrics`), accumulated on the device over a whole evaluation.

A metric keeps summable statistics (counts, sums, a confusion matrix) as tensors: `update` costs
no device sync, `compute` syncs once at the end. Logged as `val/<name>`. `score_batches` is the one
evaluation loop's arithmetic (val/loss and every metric over a split), shared by training's
evaluation (engine.evaluate) and an exported file's (export.verify).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated

import torch
from pydantic import Field
from torch.nn import functional as F

from mlrun.data.bundle import DataMeta
from mlrun.registry import metrics


class Metric:
    """Sufficient statistics in `self.state`, reset before each evaluation."""

    name = "metric"

    def reset(self, device: torch.device) -> None:
        self.state: torch.Tensor | None = None
        self.device = device

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        stats = self.statistics(outputs.detach(), targets)
        self.state = stats if self.state is None else self.state + stats

    def statistics(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute(self) -> float:
        return float(self.finish(self.state.double())) if self.state is not None else float("nan")

    def finish(self, state: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def samples_in(predictions: torch.Tensor, targets: torch.Tensor | None) -> int:
    """What a mean loss averages over: class ids and tokens count one each, other targets one per row."""
    if targets is None:
        return len(predictions)
    return targets.numel() if not targets.is_floating_point() else targets.shape[0]


# One validation batch for score_batches: (its mean loss, the samples that mean is over, predictions, targets).
Scored = tuple[torch.Tensor, int, torch.Tensor | None, torch.Tensor | None]


def score_batches(
    scored: Iterable[Scored],
    metrics: list[Metric],
    device: torch.device,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """val/loss (the mean over every sample) and val/<metric> over a split's batches.

    Each batch gives its mean loss, the samples that mean is over, and the predictions and targets the
    metrics update with (None: the batch counts towards the loss only). Sums stay float64 tensors on
    `device`, so a batch costs no sync. `reduce` sums [loss sum, count] across processes.
    """
    for metric in metrics:
        metric.reset(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for loss, n, predictions, targets in scored:
        loss_sum += loss.detach().double() * n  # the loss is a mean: weight it by its size
        count += n
        if predictions is not None:
            for metric in metrics:
                metric.update(predictions, targets)
    if reduce is not None:
        loss_sum, count = reduce(torch.stack([loss_sum, count]))
    results = {"val/loss": float(loss_sum / count.clamp(min=1))}  # one sync per figure, once per evaluation
    results.update({f"val/{metric.name}": metric.compute() for metric in metrics})
    return results


def predicted_classes(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (predictions, targets): argmax over classes, or logit > 0 for one binary output."""
    if outputs.shape[-1] == 1 or outputs.shape == targets.shape:
        return (outputs.reshape(-1) > 0).long(), targets.reshape(-1).long()
    return outputs.argmax(dim=-1).reshape(-1), targets.reshape(-1)


class Accuracy(Metric):
    name = "accuracy"

    def statistics(self, outputs, targets):
        pred, true = predicted_classes(outputs, targets)
        return torch.stack([(pred == true).sum(), torch.tensor(true.numel(), device=true.device)]).double()

    def finish(self, state):
        return state[0] / state[1]


class TopKAccuracy(Metric):
    def __init__(self, k: int):
        self.k, self.name = k, f"top{k}_accuracy"

    def statistics(self, outputs, targets):
        logits, true = outputs.flatten(0, -2), targets.reshape(-1)
        top = logits.topk(min(self.k, logits.shape[-1]), dim=-1).indices
        hits = (top == true[:, None]).any(dim=-1).sum()
        return torch.stack([hits, torch.tensor(true.numel(), device=true.device)]).double()

    def finish(self, state):
        return state[0] / state[1]


class ConfusionMetric(Metric):
    """Macro-averaged precision, recall or F1 from a confusion matrix (rows: true, columns: predicted)."""

    def __init__(self, name: str, num_classes: int):
        self.name, self.num_classes = name, num_classes

    def statistics(self, outputs, targets):
        pred, true = predicted_classes(outputs, targets)
        index = true * self.num_classes + pred
        return torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes).double()

    def finish(self, confusion):
        hits = confusion.diag()
        predicted, true = confusion.sum(dim=0), confusion.sum(dim=1)
        precision, recall = hits / predicted.clamp(min=1), hits / true.clamp(min=1)
        scores = {"precision": precision, "recall": recall}.get(self.name)
        if scores is None:
            scores = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        # Averaged over the classes that occur among the targets or predictions, as scikit-learn's macro
        # average: a class absent from both (a file of one class, an LM's unused tokens) is no failure.
        present = (predicted + true) > 0
        return scores[present].mean() if present.any() else scores.new_zeros(())


class RegressionMetric(Metric):
    """mae, rmse or r2 from [n, sum|e|, sum e^2, sum y, sum y^2]."""

    def __init__(self, name: str):
        self.name = name

    def statistics(self, outputs, targets):
        y, err = targets.float().view_as(outputs), outputs.float() - targets.float().view_as(outputs)
        n = torch.tensor(float(y.numel()), device=y.device)
        return torch.stack([n, err.abs().sum(), (err**2).sum(), y.sum(), (y**2).sum()]).double()

    def finish(self, s):
        n, abs_err, sq_err, y_sum, y_sq = s
        if self.name == "mae":
            return abs_err / n
        if self.name == "rmse":
            return (sq_err / n).sqrt()
        total = y_sq - y_sum**2 / n  # n * variance of the targets
        return 1 - sq_err / total


class Perplexity(Metric):
    name = "perplexity"

    def statistics(self, outputs, targets):
        nll = F.cross_entropy(outputs.flatten(0, -2).float(), targets.reshape(-1), reduction="sum")
        return torch.stack([nll.double(), torch.tensor(float(targets.numel()), device=targets.device).double()])

    def finish(self, state):
        return (state[0] / state[1]).exp()


def _classes(meta: DataMeta) -> int:
    return meta.num_classes or meta.vocab_size or 2


@metrics.register("accuracy", tasks=("classification", "lm"))
def accuracy(meta: DataMeta, /) -> Metric:
    """Share of correct predictions (argmax, or logit > 0 for one binary output)."""
    return Accuracy()


@metrics.register("top_k_accuracy", tasks=("classification", "lm"))
def top_k_accuracy(meta: DataMeta, /, *, k: Annotated[int, Field(ge=1)] = 5) -> Metric:
    """Share of samples whose class is among the k highest scores; logged as val/top<k>_accuracy.

    Args:
        k: how many of the highest scores count.
    """
    return TopKAccuracy(k)


@metrics.register("f1", tasks=("classification", "lm"))
def f1(meta: DataMeta, /) -> Metric:
    """Macro-averaged F1 score over classes."""
    return ConfusionMetric("f1", _classes(meta))


@metrics.register("precision", tasks=("classification", "lm"))
def precision(meta: DataMeta, /) -> Metric:
    """Macro-averaged precision over classes."""
    return ConfusionMetric("precision", _classes(meta))


@metrics.register("recall", tasks=("classification", "lm"))
def recall(meta: DataMeta, /) -> Metric:
    """Macro-averaged recall over classes."""
    return ConfusionMetric("recall", _classes(meta))


@metrics.register("mae", tasks=("regression",), lower_is_better=True)
def mae(meta: DataMeta, /) -> Metric:
    """Mean absolute error."""
    return RegressionMetric("mae")


@metrics.register("rmse", tasks=("regression",), lower_is_better=True)
def rmse(meta: DataMeta, /) -> Metric:
    """Root mean squared error."""
    return RegressionMetric("rmse")


@metrics.register("r2", tasks=("regression",))
def r2(meta: DataMeta, /) -> Metric:
    """Coefficient of determination: 1 - SSE / total sum of squares."""
    return RegressionMetric("r2")


@metrics.register("perplexity", tasks=("lm",), lower_is_better=True)
def perplexity(meta: DataMeta, /) -> Metric:
    """exp(mean token cross-entropy), for language models."""
    return Perplexity()
