"""`cluster`: weight sharing by k-means per layer, fine-tuned with tied weights, stored as indices + codebook.

    compress:
      - {name: cluster, clusters: 16, finetune: {train.epochs: 2}}

With fine-tuning the `weight_clustering` technique clusters each layer when training starts and
keeps its weights tied to their centroids; without, the stage clusters the weights once. The
stage folder holds `compressed.safetensors` (per clustered layer `<layer>.weight.indices`, uint8,
and `<layer>.weight.codebook`, fp32; every other tensor as it is): decode a layer with
`codebook[indices.long()]`. model.safetensors keeps the decoded dense weights for eval and export.
The stage's raw and Huffman sizes are those of the compressed file (Deep Compression's
"quantization + Huffman coding"). Pruned zeros stay zero: zero is one of the K values.
"""

from __future__ import annotations

import torch
from torch import nn

from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.models.parts import weight_layers
from mlrun.registry import stages
from mlrun.techniques.weight_clustering import Clusters, assign, tie

MAX_SHARED = 256  # a layer with at most this many distinct values is stored as uint8 indices


def compressed_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the clustered model is stored as: indices + codebook where a weight has <= 256 values."""
    from mlrun.compression.measure import stored_tensors

    stored = {}
    for name, tensor in stored_tensors(model).items():
        if name.endswith("weight") and tensor.dim() >= 2 and tensor.is_floating_point():
            codebook, indices = torch.unique(tensor, return_inverse=True)
            if len(codebook) <= MAX_SHARED:
                stored[f"{name}.indices"] = indices.to(torch.uint8)
                stored[f"{name}.codebook"] = codebook.float()
                continue
        stored[name] = tensor
    return stored


def check_clustered(clusters: int, layers: list[str]):
    """The stage's finish: every clustered layer holds at most `clusters` distinct values."""

    def finish(model: nn.Module) -> nn.Module:
        for name in layers:
            distinct = int(torch.unique(model.get_submodule(name).weight).numel())
            if distinct > clusters:
                raise RuntimeError(f"cluster: layer '{name}' holds {distinct} distinct values after fine-tuning")
        return model

    return finish


@stages.register("cluster", stored=compressed_tensors)
def cluster(
    model: nn.Module,
    context: StageContext,
    /,
    *,
    clusters: Clusters = 16,
    layers: list[str] = [],  # noqa: B006 - never mutated
    include_head: bool = True,
) -> Stage:
    """K-means weight sharing per layer (K values, zero kept for pruned weights), then tied fine-tuning.

    Args:
        clusters: shared values per layer, 2-256 (indices are stored in one byte).
        layers: module names (globs) of the Linear/Conv layers to cluster; default all.
        include_head: cluster the output layer too.
    """
    selected = weight_layers(model, layers, include_head)
    if not selected:
        raise UsageError("the model has no Linear or Conv layer to cluster")
    names = [name for name, _ in selected]
    if context.finetune_steps == 0:  # cluster once, here; with fine-tuning the technique does it
        for _, layer in selected:
            zeros = bool((layer.weight == 0).any())
            tie(layer.weight, assign(layer.weight, clusters), clusters, zeros)
    technique = {"name": "weight_clustering", "clusters": clusters, "layers": names, "include_head": True}
    return Stage(
        model,
        techniques=[technique],
        finish=check_clustered(clusters, names),
        report={"clusters": clusters, "layers": len(names)},
    )
