"""`model_loss`: the loss the model computes itself (a transformers model given `labels`)."""

from __future__ import annotations

from collections.abc import Mapping

from mlrun.data.batch import TARGET_KEY
from mlrun.data.bundle import DataMeta
from mlrun.models.outputs import logits_of, loss_of
from mlrun.objectives.base import Objective, ObjectiveOutput
from mlrun.registry import objectives


@objectives.register("model_loss", uses_loss=False)
def model_loss(loss_fn, meta: DataMeta, /, *, target_key: str = TARGET_KEY) -> Objective:
    """The whole batch goes to the model (`model(**batch)`, or `model(*batch)` for a tuple) and its own loss is used.

    Args:
        target_key: the key of a mapping batch that holds the targets, for metrics.
    """

    def objective(model, batch) -> ObjectiveOutput:
        if isinstance(batch, Mapping):
            outputs, targets = model(**batch), batch.get(target_key)
        else:
            outputs, targets = model(*batch), batch[1] if len(batch) > 1 else None
        return ObjectiveOutput(loss_of(outputs), logits_of(outputs), targets)

    return objective
