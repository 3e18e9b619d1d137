"""`supervised`: the configured loss of the model's logits against the batch's targets (the default)."""

from __future__ import annotations

from mlrun.data.batch import TARGET_KEY, split_batch
from mlrun.data.bundle import DataMeta
from mlrun.models.outputs import call_model, logits_of
from mlrun.objectives.base import Objective, ObjectiveOutput
from mlrun.registry import objectives


# distillable: the distill objective's label term (the loss on split_batch's targets) is this objective's loss.
@objectives.register("supervised", distillable=True)
def supervised(loss_fn, meta: DataMeta, /, *, target_key: str = TARGET_KEY) -> Objective:
    """loss(logits, targets) for `(inputs, targets)` batches, or mapping batches whose targets are `target_key`.

    Args:
        target_key: the key of a mapping batch that holds the targets; every other key goes to the model.
    """

    def objective(model, batch) -> ObjectiveOutput:
        features, targets = split_batch(batch, target_key)
        logits = logits_of(call_model(model, features))
        return ObjectiveOutput(loss_fn(logits, targets), logits, targets)

    return objective
