"""`fold_batchnorm`: each batch norm that follows a convolution or Linear folded into that layer.

    compress:
      - {name: prune, sparsity: 0.9, finetune: {train.epochs: 4}}
      - {name: fold_batchnorm}                     # exact: not fine-tuned unless finetune: is given
      - {name: cluster, clusters: 8, finetune: {train.epochs: 2}}

In eval mode a batch norm is a per-channel affine map, y = a * x + b, with a = gamma / sqrt(var + eps)
and b = beta - a * mean; folded, the layer's weight is scaled by a per output channel and b becomes
its bias, as deployment toolchains do before quantizing. The model computes the same function with
4 tensors a channel fewer (weight, bias, running mean and variance become one bias), so a small
CNN's stored file loses what it spent on normalisation. The folding is torch's own
(torch.nn.utils.fusion); each pair is recorded as a `fold_norm` model edit. Later fine-tuning trains
without those norms (their statistics are spent), so fold after the stages that need them.
"""

from __future__ import annotations

import copy
import sys
from collections import Counter

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.models.edits import replace_module
from mlrun.registry import stages

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, norm) module names: a batch norm with running statistics whose only input is a convolution
    or Linear of its width, each called once. Read from the model's traced graph (torch.fx), which also
    finds pairs held as attributes (a residual block's conv1/bn1); a model that does not trace (dict
    inputs, data-dependent control flow) is read from its plain nn.Sequential containers instead."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any tracing failure: the container scan below needs no trace
        return sequential_pairs(model)
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], NORMS) or not node.args:
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        if (
            calls[node.target] == 1
            and calls[source.target] == 1
            and _fits(modules[source.target], modules[node.target])
        ):
            pairs.append((source.target, node.target))
    return pairs


def sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """The pairs of `foldable_pairs` found next to each other in a plain nn.Sequential (whose order is the
    forward order)."""
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
            continue  # a subclass with its own forward may not call its children in order
        prefix = f"{parent_name}." if parent_name else ""
        children = list(parent.named_children())
        for (name, layer), (norm_name, norm) in zip(children, children[1:]):
            if _fits(layer, norm):
                pairs.append((prefix + name, prefix + norm_name))
    return pairs


def _fits(layer: nn.Module, norm: nn.Module) -> bool:
    return (
        isinstance(layer, (*CONVS, nn.Linear))
        and isinstance(norm, NORMS)
        and norm.track_running_stats
        and norm.num_features == layer.weight.shape[0]
    )


@torch.no_grad()
def folded(layer: nn.Module, norm: nn.Module) -> nn.Module:
    """A copy of `layer` computing layer then `norm` (in eval mode); a norm without affine parameters
    is gamma 1, beta 0 (torch's Linear fusion needs them given)."""
    gamma = norm.weight if norm.affine else torch.ones_like(norm.running_mean)
    beta = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
    fuse = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
    fused = copy.deepcopy(layer)
    fused.weight, fused.bias = fuse(
        layer.weight, layer.bias, norm.running_mean, norm.running_var, norm.eps, gamma, beta
    )
    return fused


@stages.register("fold_batchnorm", exact=True)
def fold_batchnorm(model: nn.Module, context: StageContext, /) -> Stage:
    """Fold every batch norm that directly follows a convolution or Linear into it (exact in eval mode)."""
    if context.rounds > 1:
        raise UsageError("fold_batchnorm folds every norm at once; remove rounds (it is exact: nothing to spread)")
    pairs = foldable_pairs(model)
    folding = {norm for _, norm in pairs}
    left = [name for name, module in model.named_modules() if isinstance(module, NORMS) and name not in folding]
    if not pairs:
        raise ValueError(
            "the model has no batch norm whose only input is a convolution or Linear layer to fold"
            + (f" (batch norms elsewhere: {', '.join(left)})" if left else "")
        )
    if left:  # e.g. a norm after an addition, or in a model that does not trace and outside nn.Sequential
        print(
            f"mlrun: fold_batchnorm: left unfolded (their input is not one convolution or Linear): {left}",
            file=sys.stderr,
        )
    edits, removed = [], 0
    for layer_name, norm_name in pairs:
        layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
        added_bias = 0 if layer.bias is not None else norm.num_features
        removed += sum(t.numel() for t in norm.state_dict().values()) - added_bias
        replace_module(model, layer_name, folded(layer, norm))
        replace_module(model, norm_name, nn.Identity())
        edits.append({"op": "fold_norm", "module": layer_name, "norm": norm_name})
    report = {"folded": sorted(folding), "left_unfolded": left, "values_removed": removed}
    return Stage(model, edits=edits, report=report)
