"""`prune`: unstructured magnitude pruning, one-shot or gradual (Zhu & Gupta) during fine-tuning.

    compress:
      - {name: prune, sparsity: 0.9, finetune: {train.epochs: 4}}            # cubic ramp, then fine-tune
      - {name: prune, sparsity: 0.9, rounds: 3, schedule: one_shot}          # prune, fine-tune, x3

With fine-tuning the `magnitude_pruning` technique raises the sparsity over the first
`ramp` share of the steps and keeps pruned weights at zero; its masks are checkpointed, so the
fine-tuning resumes exactly. With `rounds: N` each round reaches 1 - (1 - sparsity)^(r/N).
The weights stay dense tensors with zeros: smaller once entropy-coded or stored sparse, not faster
on dense kernels (use `prune_structured` for speed).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.models.addressing import weight_layers
from mlrun.registry import stages
from mlrun.techniques.magnitude_pruning import Sparsity, check_not_emptied, magnitude_masks


def round_target(sparsity: float, round_: int, rounds: int) -> float:
    """Sparsity after round `round_` of `rounds`: equal shares of the remaining weights each round."""
    return 1.0 - (1.0 - sparsity) ** (round_ / rounds)


@stages.register("prune")
def prune(
    model: nn.Module,
    context: StageContext,
    /,
    *,
    sparsity: Sparsity = 0.8,
    scope: Literal["global", "layer"] = "global",
    schedule: Literal["cubic", "one_shot"] = "cubic",
    ramp: Annotated[float, Field(gt=0.0, le=1.0)] | None = None,
    every: PositiveInt | None = None,
    layers: list[str] = [],  # noqa: B006 - never mutated
    include_head: bool = False,
) -> Stage:
    """Zero the smallest-magnitude weights of Linear and Conv layers.

    Args:
        sparsity: share of the selected weights that end up zero.
        scope: global ranks all selected weights together; layer prunes each layer equally.
        schedule: cubic raises the sparsity gradually during fine-tuning; one_shot prunes at once.
        ramp: share of the fine-tuning steps over which the cubic schedule reaches the target (default 0.75).
        every: steps between mask updates while the sparsity rises (default 10).
        layers: module names (globs) to prune; default every Linear/Conv layer but the output layer.
        include_head: prune the output layer too.
    """
    if schedule == "one_shot" and (ramp, every) != (None, None):  # set, they would shape a ramp that never runs
        raise UsageError("ramp and every are settings of schedule: cubic; remove them, or use schedule: cubic")
    ramp, every = ramp or 0.75, every or 10
    selected = weight_layers(model, layers, include_head)
    if not selected:
        raise ValueError("the model has no Linear or Conv layer to prune")
    names = [name for name, _ in selected]
    weights = {name: layer.weight for name, layer in selected}
    target = round_target(sparsity, context.round, context.rounds)
    before = round_target(sparsity, context.round - 1, context.rounds)
    masks = magnitude_masks(weights, target, scope)
    check_not_emptied(masks, target)  # exit 2 naming the layer, before any work
    gradual = schedule == "cubic" and context.finetune_steps > 0
    if not gradual:
        with torch.no_grad():
            for name, weight in weights.items():
                weight.mul_(masks[name])
    technique = {
        "name": "magnitude_pruning",
        "sparsity": target,
        "initial_sparsity": before if gradual else target,
        "end_step": round(ramp * context.finetune_steps) if gradual else 0,
        "every": every,
        "scope": scope,
        "layers": names,
        "include_head": True,  # the layers are listed explicitly
    }
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return Stage(
        model,
        techniques=[technique],
        # The schedule that ran: cubic needs fine-tuning steps to ramp over, without them it prunes at once.
        report={
            "target_sparsity": target,
            "layers": len(names),
            "pruned_weights": total - kept,
            "schedule": "cubic" if gradual else "one_shot",
        },
    )
