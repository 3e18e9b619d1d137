"""`low_rank`: each Linear (and 1x1 Conv2d) replaced by two thin layers from a truncated SVD.

    compress:
      - {name: low_rank, energy: 0.9, finetune: {train.epochs: 3}}    # smallest rank keeping 90% energy
      - {name: low_rank, rank: 32}                                     # one rank for every layer

W (out x in) = U S V^T is cut to its first r singular values: the first layer holds sqrt(S_r) V_r^T
(in -> r, no bias), the second U_r sqrt(S_r) (r -> out, the bias). A layer is left whole when the pair
would not be smaller (r * (in + out) >= in * out). The replacement is recorded as a `factorize`
model edit, so the stage's config.yaml rebuilds the thin layers.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, PositiveInt
from torch import nn

from mlrun.compression.stage import Stage, StageContext
from mlrun.models.addressing import weight_layers
from mlrun.models.edits import replace_module, thin_pair
from mlrun.registry import stages


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values hold `energy` of the sum of their squares."""
    share = torch.cumsum(singular.double() ** 2, 0) / (singular.double() ** 2).sum()
    return int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1


@torch.no_grad()
def factorize(layer: nn.Module, rank: int) -> nn.Sequential:
    """The two thin layers whose product is the best rank-`rank` approximation of `layer`."""
    weight = layer.weight.detach().float().reshape(layer.weight.shape[0], -1)  # (out, in)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    pair = thin_pair(layer, rank)
    pair[0].weight.copy_((root[:, None] * vh[:rank]).reshape(pair[0].weight.shape))
    pair[1].weight.copy_((u[:, :rank] * root).reshape(pair[1].weight.shape))
    if layer.bias is not None:
        pair[1].bias.copy_(layer.bias)
    return pair


@stages.register("low_rank", undoes=("prune",))  # its factors are dense: the zeros are gone
def low_rank(
    model: nn.Module,
    context: StageContext,
    /,
    *,
    rank: PositiveInt | None = None,
    energy: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9,
    layers: list[str] = [],  # noqa: B006 - never mutated
    include_head: bool = False,
) -> Stage:
    """Truncated-SVD factorization of Linear and 1x1 Conv2d layers into two thin layers.

    Args:
        rank: the rank of every factorized layer (capped by the layer's size); default: by energy.
        energy: without rank, each layer's smallest rank keeping this share of its squared singular values.
        layers: module names (globs) to factorize; default every Linear / 1x1 conv but the output layer.
        include_head: factorize the output layer too.
    """
    candidates = [
        (name, layer)
        for name, layer in weight_layers(model, layers, include_head)
        if isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1))
    ]
    if not candidates:
        raise ValueError("the model has no Linear or 1x1 Conv2d layer to factorize")
    edits, ranks, kept = [], {}, {}
    for name, layer in candidates:
        weight = layer.weight.detach().float().reshape(layer.weight.shape[0], -1)
        out_features, in_features = weight.shape
        chosen = min(rank, *weight.shape) if rank else rank_for_energy(torch.linalg.svdvals(weight), energy)
        if chosen * (in_features + out_features) >= in_features * out_features:
            kept[name] = chosen  # two layers of this rank would not be smaller
            continue
        replace_module(model, name, factorize(layer, chosen))
        edits.append({"op": "factorize", "module": name, "rank": chosen})
        ranks[name] = chosen
    if not edits:
        raise ValueError(f"no layer gets smaller at these ranks ({kept}); lower rank or energy")
    return Stage(model, edits=edits, report={"ranks": ranks, "left_whole": kept})
