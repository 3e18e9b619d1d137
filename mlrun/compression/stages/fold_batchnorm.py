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

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from mlrun.compression.stage import Stage, StageContext
from mlrun.models.edits import replace_module
from mlrun.registry import stages

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, norm) module names: a batch norm with running statistics right after a convolution or
    Linear of its width in one nn.Sequential (whose order is the forward order)."""
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        prefix = f"{parent_name}." if parent_name else ""
        children = list(parent.named_children())
        for (name, layer), (norm_name, norm) in zip(children, children[1:]):
            if not (isinstance(layer, (*CONVS, nn.Linear)) and isinstance(norm, NORMS)):
                continue
            if norm.track_running_stats and norm.num_features == layer.weight.shape[0]:
                pairs.append((prefix + name, prefix + norm_name))
    return pairs


@stages.register("fold_batchnorm", exact=True)
def fold_batchnorm(model: nn.Module, context: StageContext, /) -> Stage:
    """Fold every batch norm that directly follows a convolution or Linear into it (exact in eval mode)."""
    pairs = foldable_pairs(model)
    if not pairs:
        raise ValueError("the model has no batch norm right after a convolution or Linear layer to fold")
    edits, removed = [], 0
    with torch.no_grad():
        for layer_name, norm_name in pairs:
            layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
            layer.eval()  # the fused layer uses the norm's running statistics
            norm.eval()
            added_bias = 0 if layer.bias is not None else norm.num_features
            removed += sum(t.numel() for t in norm.state_dict().values()) - added_bias
            fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
            replace_module(model, layer_name, fuse(layer, norm))
            replace_module(model, norm_name, nn.Identity())
            edits.append({"op": "fold_norm", "module": layer_name, "norm": norm_name})
    return Stage(model, edits=edits, report={"folded": [norm for _, norm in pairs], "values_removed": removed})
