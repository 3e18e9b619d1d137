"""`early_exit`: the weighted sum of the loss at every exit and at the final head (BranchyNet).

    loss = sum_i weights[i] * loss(exit_i logits, targets) + weights[-1] * loss(final logits, targets)

The exits and their weights come from the `early_exit` technique; metrics and evaluation score the
final head (what the plain forward returns), and `mlrun eval` scores every confidence threshold.
"""

from __future__ import annotations

from mlrun.data.batch import TARGET_KEY, split_batch
from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.models.exits import find_exits
from mlrun.objectives.base import Objective, ObjectiveOutput
from mlrun.registry import objectives


@objectives.register("early_exit")
def early_exit(loss_fn, meta: DataMeta, /, *, target_key: str = TARGET_KEY) -> Objective:
    """Weighted sum of the configured loss at each exit of `techniques: [early_exit]` and at the final head.

    Args:
        target_key: the key of a mapping batch that holds the targets; every other key goes to the model.
    """
    if meta.task != "classification":
        raise UsageError(f"objective early_exit: exits classify samples; the data's task is '{meta.task}'")

    def objective(model, batch) -> ObjectiveOutput:
        exits = find_exits(model)
        if exits is None:
            raise UsageError(
                "objective early_exit needs exits on the model: add techniques: [{name: early_exit, after: [0]}]"
            )
        features, targets = split_batch(batch, target_key)
        every = exits.collect(model, features)  # one forward: each exit's logits, then the final head's
        loss = sum(weight * loss_fn(logits, targets) for weight, logits in zip(exits.weights, every))
        return ObjectiveOutput(loss, every[-1], targets)

    return objective
