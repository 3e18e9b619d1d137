"""`causal_lm`: next-token prediction on a token batch.

Two batch forms: `(tokens, next_tokens)` as `text_lm` yields them (targets already shifted), or a
mapping with `input_ids` (and optionally `attention_mask`, `labels`) as tokenizers produce, where the
targets are the inputs shifted by one and padded positions (mask 0, or label -100) do not count.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mlrun.data.bundle import DataMeta
from mlrun.models.outputs import call_model, logits_of
from mlrun.objectives.base import Objective, ObjectiveOutput
from mlrun.registry import objectives

IGNORE = -100  # the transformers convention for a label that does not count


def _shifted(logits: torch.Tensor, batch: Mapping, input_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1, V) logits and (B, T-1) targets, or (N, V) and (N,) over the counted positions only."""
    targets = batch.get("labels", batch[input_key])[:, 1:]
    logits = logits[:, :-1]
    counted = targets != IGNORE
    if "attention_mask" in batch:
        counted = counted & batch["attention_mask"][:, 1:].bool()
    if "attention_mask" not in batch and "labels" not in batch:
        return logits, targets
    return logits[counted], targets[counted]  # one device sync: the price of padding


# distillable "pairs": for (tokens, next_tokens) batches the distill objective's label term is this loss;
# tokenizer mappings, whose targets are the inputs shifted here, are not.
@objectives.register("causal_lm", distillable="pairs")
def causal_lm(loss_fn, meta: DataMeta, /, *, input_key: str = "input_ids") -> Objective:
    """Next-token loss (the configured loss, cross_entropy by default) over every counted position.

    Args:
        input_key: the key of a mapping batch that holds the token ids.
    """

    def objective(model, batch) -> ObjectiveOutput:
        if isinstance(batch, Mapping):
            features = {k: v for k, v in batch.items() if k != "labels"}
            logits, targets = _shifted(logits_of(call_model(model, features)), batch, input_key)
        else:
            tokens, targets = batch
            logits = logits_of(model(tokens))
        return ObjectiveOutput(loss_fn(logits, targets), logits, targets)

    return objective
