"""`prune_structured`: remove whole channels, neurons and attention heads, so layers get smaller and faster.

    compress:
      - {name: prune_structured, ratio: 0.5, rounds: 2, finetune: {train.epochs: 3}}

Channels of Conv layers and hidden units of Linear layers are removed through Torch-Pruning's
dependency graph (Fang et al., DepGraph 2023): every layer coupled to a removed channel (the next
layer's inputs, batch norm, residual additions) shrinks with it, ranked by the group's L2 (or L1)
weight magnitude. Attention heads of mlrun's transformer blocks are removed whole, ranked by the
norm of their query/key/value and output weights; the residual width (embeddings, norms, the
layers writing into the residual stream) and the output layer are kept. With `rounds: N` each
round removes 1 - (1 - ratio)^(1/N) of what is left and the model is fine-tuned in between, so the
stage ends at `ratio` of the original widths. The new shapes are recorded as `resize` model edits.
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.models.edits import resize_edits, snapshot
from mlrun.models.parts import weight_layers
from mlrun.models.transformer import Block, SelfAttention
from mlrun.registry import stages


@torch.no_grad()
def prune_heads(attention: SelfAttention, keep: int) -> None:
    """Keep the `keep` heads with the largest q/k/v and output weights (qkv rows are laid out 3 x H x D)."""
    heads, qkv, proj = attention.heads, attention.qkv, attention.proj
    size = qkv.out_features // (3 * heads)
    rows = qkv.weight.view(3, heads, size, -1)
    columns = proj.weight.view(proj.out_features, heads, size)
    score = rows.pow(2).sum((0, 2, 3)) + columns.pow(2).sum((0, 2))
    kept = score.topk(keep).indices.sort().values
    qkv.weight = nn.Parameter(rows[:, kept].reshape(3 * keep * size, -1).clone())
    if qkv.bias is not None:
        qkv.bias = nn.Parameter(qkv.bias.view(3, heads, size)[:, kept].reshape(-1).clone())
    proj.weight = nn.Parameter(columns[:, kept].reshape(proj.out_features, keep * size).clone())
    qkv.out_features, proj.in_features, attention.heads = 3 * keep * size, keep * size, keep


def torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:
        raise UsageError("stage prune_structured needs Torch-Pruning: pip install 'mlrun[compress]'") from None
    return tp


@stages.register("prune_structured")
def prune_structured(
    model: nn.Module,
    context: StageContext,
    /,
    *,
    ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5,
    importance: Literal["l2", "l1"] = "l2",
    heads: bool = True,
    ignored: list[str] = [],  # noqa: B006 - never mutated
    round_to: PositiveInt | None = None,
) -> Stage:
    """Remove channels, hidden units and attention heads (Torch-Pruning's dependency graph).

    Args:
        ratio: share of each prunable layer's channels / units (and of each block's heads) removed by the stage.
        importance: l2 or l1 magnitude of each coupled group's weights.
        heads: remove whole attention heads of transformer blocks (the head size stays).
        ignored: module names (globs) whose output channels are kept (the output layer always is).
        round_to: keep channel counts multiples of this (hardware-friendly widths).
    """
    tp = torch_pruning()
    step = 1.0 - (1.0 - ratio) ** (1.0 / context.rounds)  # of the current width, this round
    before = snapshot(model)
    macs_before = _macs(tp, model, context.example)
    removed_heads = _prune_all_heads(model, step) if heads else {}
    kept = _kept_layers(model, ignored)
    pruner = tp.pruner.MetaPruner(
        model,
        context.example,
        importance=tp.importance.GroupMagnitudeImportance(p=2 if importance == "l2" else 1),
        pruning_ratio=step,
        ignored_layers=kept,
        round_to=round_to,
    )
    model.eval()
    pruner.step()
    for name, layer in weight_layers(model, [], True):
        if layer.weight.shape[0] == 0 or layer.weight.shape[1] == 0:
            raise UsageError(f"ratio {ratio} removes every channel of layer '{name}'; lower the ratio")
    edits = resize_edits(before, model)
    if not edits:
        raise UsageError(
            f"nothing to prune in {type(model).__name__}: every Linear/Conv layer is the output layer, "
            f"ignored, or too narrow for ratio {ratio}"
        )
    macs_after = _macs(tp, model, context.example)
    return Stage(
        model,
        edits=edits,
        report={
            "round_ratio": step,
            "macs_removed": 1 - macs_after / macs_before,
            "heads_kept": removed_heads,
            "widths": {e["module"]: e["shapes"].get("weight") for e in edits if "weight" in e["shapes"]},
        },
    )


def _prune_all_heads(model: nn.Module, step: float) -> dict[str, int]:
    kept = {}
    for name, module in model.named_modules():
        if isinstance(module, SelfAttention) and module.heads > 1:
            keep = max(1, round(module.heads * (1.0 - step)))
            if keep < module.heads:
                prune_heads(module, keep)
            kept[name] = module.heads
    return kept


def _kept_layers(model: nn.Module, ignored: list[str]) -> list[nn.Module]:
    """Layers whose output channels stay: the output layer, `ignored`, attention and residual writers."""
    prunable = {name for name, _ in weight_layers(model, [], False)}  # all but the output layer
    kept = [layer for name, layer in weight_layers(model, [], True) if name not in prunable]
    every = [name for name, _ in model.named_modules()]
    for pattern in ignored:
        matched = [name for name in every if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise UsageError(f"ignored: '{pattern}' matches no module of {type(model).__name__}")
        kept += [model.get_submodule(name) for name in matched]
    for block in (m for m in model.modules() if isinstance(m, Block)):
        # Attention is pruned whole heads at a time above; qkv/proj and mlp[2] write the residual width.
        kept += [block.attn.qkv, block.attn.proj, block.mlp[2]]
    return kept


def _macs(tp, model: nn.Module, example) -> float:
    return float(tp.utils.count_ops_and_params(model, example)[0])
