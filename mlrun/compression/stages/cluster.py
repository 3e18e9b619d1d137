"""`cluster`: weight sharing by k-means per layer, fine-tuned with tied weights, stored as indices + codebook.

    compress:
      - {name: cluster, clusters: 16, finetune: {train.epochs: 2}}

With fine-tuning the `weight_clustering` technique clusters each layer when training starts and
keeps its weights tied to their centroids; without, the stage clusters the weights once. The
stage folder holds `compressed.safetensors`: per clustered layer the codebook and the indices
bit-packed at ceil(log2 K) bits, pruned layers as non-zero indices + compact positions (format in
mlrun.models.packed_weights); eval, predict and export of the stage load it. model.safetensors keeps
the dense weights. The stage's raw size is that file's, its Huffman size the file's streams
entropy-coded (Deep Compression's "quantization + Huffman coding"). Pruned zeros stay zero: zero is
one of the K values.
"""

from __future__ import annotations

import torch
from torch import nn

from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.models.addressing import weight_layers
from mlrun.models.packed_weights import PackedWeights, pack_state
from mlrun.registry import stages
from mlrun.techniques.weight_clustering import Clusters, assign, tie


def packed_model(model: nn.Module) -> PackedWeights:
    """The clustered model as stored: bit-packed indices + codebooks (non-zero weights only where pruned)."""
    from mlrun.compression.measure import stored_tensors

    return pack_state(stored_tensors(model))


def check_clustered(clusters: int, layers: list[str]):
    """The stage's finish: every clustered layer holds at most `clusters` distinct values."""

    def finish(model: nn.Module) -> nn.Module:
        for name in layers:
            distinct = int(torch.unique(model.get_submodule(name).weight).numel())
            if distinct > clusters:
                raise RuntimeError(f"cluster: layer '{name}' holds {distinct} distinct values after fine-tuning")
        return model

    return finish


@stages.register("cluster", stored=packed_model)
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
        clusters: shared values per layer, 2-256 (indices stored at ceil(log2 clusters) bits).
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
