"""Unstructured magnitude pruning during training, with the gradual schedule of Zhu & Gupta (2017).

    techniques:
      - {name: magnitude_pruning, sparsity: 0.9, end_step: 300, every: 10}

The sparsity rises from `initial_sparsity` at step 0 to `sparsity` at `end_step` along
s_t = s_f + (s_i - s_f) * (1 - t / end_step)^3, pruning fast while the network has many redundant
weights and slowly as few remain. Every `every` steps the masks are recomputed from the weights'
magnitudes (globally over all layers, or per layer); after every optimizer step the pruned weights
are set back to zero. The masks are this technique's state, saved in checkpoints, so a resumed run
continues with exactly the same masks. `mlrun compress` adds it for its `prune` stage.

Masks alone do not make dense kernels faster: a zero is multiplied like any other weight. What they
buy is storage (sparse or entropy-coded formats) and, through `prune_structured`, smaller layers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import nn

from mlrun.callbacks import Callback
from mlrun.errors import UsageError
from mlrun.models.addressing import weight_layers
from mlrun.registry import techniques

Sparsity = Annotated[float, Field(ge=0.0, lt=1.0)]


def cubic_sparsity(step: int, initial: float, final: float, end_step: int) -> float:
    """Zhu & Gupta's schedule: `initial` at step 0, `final` from `end_step` on."""
    if end_step <= 0 or step >= end_step:
        return final
    return final + (initial - final) * (1.0 - step / end_step) ** 3


@torch.no_grad()
def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks zeroing the `sparsity` share of smallest |w|, over all layers (global) or in each."""
    if sparsity <= 0:
        return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    if scope == "layer":
        return {name: _keep_largest(w.abs(), sparsity) for name, w in weights.items()}
    scores = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    count = int(sparsity * scores.numel())
    threshold = torch.kthvalue(scores, count).values if count > 0 else scores.min() - 1
    return {name: w.detach().abs().float() > threshold for name, w in weights.items()}


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    count = int(sparsity * scores.numel())
    if count == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores.flatten().float(), count).values
    return scores.float() > threshold


def check_not_emptied(masks: dict[str, torch.Tensor], sparsity: float) -> None:
    for name, mask in masks.items():
        if not mask.any():
            raise UsageError(
                f"sparsity {sparsity} removes every weight of layer '{name}'; lower the sparsity, use "
                "scope: layer, or leave the layer out (layers: [...])"
            )


class MagnitudePruning(Callback):
    name = "magnitude_pruning"

    def __init__(
        self,
        weights: dict[str, nn.Parameter],
        sparsity: float,
        initial: float,
        end_step: int,
        every: int,
        scope: str,
        keep_zeros: bool = False,
    ):
        self.pruned, self.scope, self.keep_zeros = weights, scope, keep_zeros
        self.sparsity, self.initial, self.end_step, self.every = sparsity, initial, end_step, every
        self.masks: dict[str, torch.Tensor] = {}
        self.level = 0.0  # the sparsity the masks hold now

    def on_train_start(self, model: nn.Module) -> None:
        if self.keep_zeros:  # weights pruned earlier (a previous compress stage) stay pruned
            self.masks = {name: weight.detach() != 0 for name, weight in self.pruned.items()}
            self.level = self.sparsity
            self._apply()
            return
        self._prune_to(cubic_sparsity(0, self.initial, self.sparsity, self.end_step))

    @torch.no_grad()
    def on_step_end(self, model: nn.Module, state: Any) -> None:
        target = cubic_sparsity(state.step, self.initial, self.sparsity, self.end_step)
        if target > self.level and (state.step % self.every == 0 or state.step >= self.end_step):
            self._prune_to(target)
        self._apply()

    def _prune_to(self, level: float) -> None:
        self.masks = magnitude_masks(self.pruned, level, self.scope)
        check_not_emptied(self.masks, level)
        self.level = level
        self._apply()

    @torch.no_grad()
    def _apply(self) -> None:
        for name, weight in self.pruned.items():
            weight.mul_(self.masks[name].to(weight.device))

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "masks": {k: v.cpu() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level, self.masks = state["level"], dict(state["masks"])
        self._apply()


# holds_zeros: weights at zero stay at zero while it trains (a compress stage adds no second holder).
@techniques.register("magnitude_pruning", holds_zeros=True)
def magnitude_pruning(
    model: nn.Module,
    /,
    *,
    sparsity: Sparsity,
    initial_sparsity: Sparsity = 0.0,
    end_step: NonNegativeInt = 0,
    every: PositiveInt = 10,
    scope: Literal["global", "layer"] = "global",
    layers: list[str] = [],  # noqa: B006 - never mutated
    include_head: bool = False,
    keep_zeros: bool = False,
) -> Callback:
    """Zero the smallest weights, rising to `sparsity` along a cubic schedule, and keep them zero.

    Args:
        sparsity: share of the selected weights that are zero at the end.
        initial_sparsity: the share pruned at the first step.
        end_step: optimizer step at which `sparsity` is reached (0: at once).
        every: steps between recomputing the masks while the sparsity rises.
        scope: global ranks all selected weights together (layers end up with different sparsity);
            layer prunes each layer to the same sparsity.
        layers: module names (globs) of the Linear/Conv layers to prune; default all but the output layer.
        include_head: prune the output layer too.
        keep_zeros: instead of ranking magnitudes, fix the masks to the weights that are zero at the start
            (keeps an earlier pruning while fine-tuning for something else).
    """
    selected = weight_layers(model, layers, include_head)
    if not selected:
        raise UsageError("magnitude_pruning: the model has no Linear or Conv layer to prune")
    weights = {name: layer.weight for name, layer in selected}
    return MagnitudePruning(weights, sparsity, initial_sparsity, end_step, every, scope, keep_zeros)
