"""The `early_exit` technique: classifier exits after chosen blocks of `model.blocks` (BranchyNet).

Training sums the exits' losses with weights (the `early_exit` objective); at inference a sample
leaves at the first exit whose softmax confidence reaches a threshold (mlrun.models.exits), so easy
samples skip the deeper blocks. `mlrun eval` sweeps the thresholds.

Try: `mlrun train configs/digits_early_exit.yaml`, then `mlrun eval runs/digits_early_exit`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, NonNegativeInt, PositiveInt
from torch import nn

from mlrun.errors import UsageError
from mlrun.models.addressing import block_width
from mlrun.models.exits import EarlyExits, ExitHead
from mlrun.registry import techniques
from mlrun.techniques.activation_checkpointing import declared_blocks

Confidence = Annotated[float, Field(gt=0.0, le=1.0)]


def final_classes(model: nn.Module) -> int:
    """Output width of the model's own head: the last linear layer outside its blocks."""
    inside = {id(m) for m in declared_blocks(model).modules()}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in inside]
    if not linears:
        raise UsageError("technique early_exit: the model has no linear head after its blocks to match")
    return linears[-1].out_features


# Declared with the entry: the exits are trained by objective early_exit, and they are parameters
# that a reloaded export must rebuild before loading its weights.
@techniques.register("early_exit", objective="early_exit", adds_parameters=True)
def early_exit(
    model: nn.Module,
    /,
    *,
    after: list[NonNegativeInt],
    weights: list[Annotated[float, Field(ge=0.0)]] | None = None,
    thresholds: list[Confidence] = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99],  # noqa: B006 - never mutated
    pool: PositiveInt = 1,
    hidden: NonNegativeInt = 0,
) -> None:
    """Classifier exits after the given blocks; train with `objective: early_exit`; `mlrun eval` sweeps thresholds.

    Args:
        after: indices of the blocks (model.blocks) to put an exit after, e.g. [0, 1].
        weights: loss weight of each exit and then of the final head (default 1 each).
        thresholds: softmax confidences at which a sample leaves, evaluated by `mlrun eval`.
        pool: image exits average-pool feature maps to pool x pool before the classifier.
        hidden: width of a hidden layer in each exit classifier (0: a single linear layer).
    """
    blocks = declared_blocks(model)
    if not after or sorted(set(after)) != list(after) or after[-1] >= len(blocks) - 1:
        raise UsageError(
            f"technique early_exit: after must list increasing block indices below the last block "
            f"(0..{len(blocks) - 2}; the model has {len(blocks)} blocks and its own head ends the last), got {after}"
        )
    weights = list(weights) if weights is not None else [1.0] * (len(after) + 1)
    if len(weights) != len(after) + 1:
        raise UsageError(
            f"technique early_exit: weights needs {len(after) + 1} values (one per exit, then the final head)"
        )
    classes = final_classes(model)
    heads = [ExitHead(block_width(blocks[i], i, "technique early_exit"), classes, pool, hidden) for i in after]
    model.exits = EarlyExits(blocks, list(after), weights, sorted(thresholds), heads)
    return None
