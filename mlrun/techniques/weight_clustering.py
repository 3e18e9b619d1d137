"""Weight clustering (Deep Compression, Han et al. 2016): each layer's weights share K values.

    techniques:
      - {name: weight_clustering, clusters: 16}

When training starts, each selected layer's weights are grouped by 1-D k-means (centroids
initialised evenly between the smallest and largest weight, as Han et al. found best) and every
weight is set to its centroid. After each optimizer step the weights of a cluster are set to their
mean, so each centroid moves by the average update of its members while the assignments stay
fixed: the weights remain tied to K values throughout. Weights that are exactly zero (pruned
earlier) form a cluster of their own that stays zero. The assignments are this technique's state,
saved in checkpoints, so a resumed run continues with the same clusters.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from mlrun.callbacks import Callback
from mlrun.errors import UsageError
from mlrun.models.addressing import weight_layers
from mlrun.registry import techniques

Clusters = Annotated[int, Field(ge=2, le=256)]
ITERATIONS = 20


@torch.no_grad()
def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = ITERATIONS) -> torch.Tensor:
    """Cluster index (0..clusters-1, centroids ascending) of each value; linear initialisation."""
    values = values.float()
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters)
    for _ in range(iterations):
        index = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)  # nearest centroid in 1-D
        counts = torch.bincount(index, minlength=clusters)
        sums = torch.bincount(index, weights=values, minlength=clusters)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        moved, _ = moved.sort()
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)


@torch.no_grad()
def assign(weight: torch.Tensor, clusters: int) -> torch.Tensor:
    """Cluster of every weight (int16, weight's shape); exact zeros get cluster 0, which stays zero."""
    flat = weight.detach().flatten().cpu()
    zeros = flat == 0
    index = torch.zeros_like(flat, dtype=torch.long)
    if zeros.any():
        if (~zeros).any():
            index[~zeros] = kmeans_1d(flat[~zeros], clusters - 1) + 1
    else:
        index = kmeans_1d(flat, clusters)
    return index.to(torch.int16).reshape(weight.shape)


@torch.no_grad()
def tie(weight: torch.Tensor, index: torch.Tensor, clusters: int, zero_cluster: bool) -> None:
    """Set every weight to the mean of its cluster; with `zero_cluster`, cluster 0 stays exactly zero."""
    flat, labels = weight.view(-1), index.view(-1).long().to(weight.device)
    counts = torch.bincount(labels, minlength=clusters).clamp(min=1)
    means = torch.bincount(labels, weights=flat.float(), minlength=clusters) / counts
    if zero_cluster:
        means[0] = 0.0
    flat.copy_(means[labels].to(flat.dtype))


class WeightClustering(Callback):
    name = "weight_clustering"

    def __init__(self, layers: dict[str, torch.Tensor], clusters: int):
        self.layers, self.clusters = layers, clusters
        self.assignments: dict[str, torch.Tensor] = {}
        self.zero_cluster: dict[str, bool] = {}

    def on_train_start(self, model: nn.Module) -> None:
        for name, weight in self.layers.items():
            self.zero_cluster[name] = bool((weight == 0).any())
            self.assignments[name] = assign(weight, self.clusters)
        self.on_step_end(model, None)

    @torch.no_grad()
    def on_step_end(self, model: nn.Module, state: Any) -> None:
        for name, weight in self.layers.items():
            tie(weight, self.assignments[name], self.clusters, self.zero_cluster[name])

    def state_dict(self) -> dict[str, Any]:
        return {"assignments": dict(self.assignments), "zero_cluster": dict(self.zero_cluster)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The checkpoint's weights are tied already; tying them again could move them by rounding.
        self.assignments, self.zero_cluster = dict(state["assignments"]), dict(state["zero_cluster"])


@techniques.register("weight_clustering")
def weight_clustering(
    model: nn.Module,
    /,
    *,
    clusters: Clusters = 16,
    layers: list[str] = [],  # noqa: B006 - never mutated
    include_head: bool = True,
) -> Callback:
    """Tie each layer's weights to `clusters` shared values (k-means), kept tied while training.

    Args:
        clusters: shared values per layer (2-256; zero, when the layer has pruned weights, is one of them).
        layers: module names (globs) of the Linear/Conv layers to cluster; default all.
        include_head: cluster the output layer too.
    """
    selected = weight_layers(model, layers, include_head)
    if not selected:
        raise UsageError("weight_clustering: the model has no Linear or Conv layer to cluster")
    return WeightClustering({name: layer.weight for name, layer in selected}, clusters)
