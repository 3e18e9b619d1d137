"""`prune_structured`: remove whole channels (Conv), neurons (Linear) and attention heads, so layers
get narrower and dense kernels faster, through Torch-Pruning's dependency graph (DepGraph).

    compress:
      - {name: prune_structured, ratio: 0.5, rounds: 3, finetune: {train.epochs: 2}}
      - {name: prune_structured, ratio: 0.5, heads: 0.5}     # also half of each attention's heads

`ratio` is the share of each prunable width's original units removed by the end of the stage
(per layer, ranked by the group's weight magnitude); round r of N reaches ratio * r / N, with
fine-tuning between rounds. Coupled layers (a Linear's outputs and the next one's inputs, a conv's
batch norm) are pruned together. Kept whole: the output layer, and any width shared with an
embedding table or a free parameter: the residual stream of a transformer (tied to the lm_head in
GPT). `heads` removes that share of each attention's heads (mlrun's SelfAttention). The new shapes
are recorded as `resize` model_edits, so eval, export and further stages rebuild the narrow model.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Annotated, Literal

from pydantic import Field, PositiveInt
from torch import nn

from mlrun.compression.measure import count_macs
from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.models.addressing import added_head_prefixes, weight_layers
from mlrun.models.edits import resize_edits, snapshot
from mlrun.models.exits import find_exits
from mlrun.registry import stages

Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]


def round_share(ratio: float, round_: int, rounds: int) -> float:
    """Share of the current width to remove in round `round_` so round r ends at ratio * r / rounds."""
    done, target = ratio * (round_ - 1) / rounds, ratio * round_ / rounds
    return (target - done) / (1.0 - done)


@stages.register("prune_structured")
def prune_structured(
    model: nn.Module,
    context: StageContext,
    /,
    *,
    ratio: Ratio = 0.5,
    heads: Ratio = 0.0,
    importance: Literal["l1", "l2"] = "l2",
    ignored: list[str] = [],  # noqa: B006 - never mutated
    round_to: PositiveInt | None = None,
) -> Stage:
    """Remove the least important channels, neurons and attention heads (Torch-Pruning).

    Args:
        ratio: share of each prunable width (Conv channels, Linear hidden units) removed over the stage.
        heads: share of each attention layer's heads removed over the stage (mlrun's SelfAttention).
        importance: group weight magnitude, L1 or L2 norm, summed over the coupled layers.
        ignored: module names (globs) whose outputs are kept whole; the output layer always is.
        round_to: keep widths a multiple of this (e.g. 8 for tensor cores).
    """
    try:
        import torch_pruning as tp
    except ImportError:
        raise UsageError("needs Torch-Pruning: pip install 'mlrun[compress]'") from None

    inputs = context.example if isinstance(context.example, tuple) else (context.example,)
    kept = _kept_modules(model, ignored)
    attention = _attention_layers(model) if heads > 0 else {}
    macs_before = count_macs(model, inputs)
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs=inputs[0] if len(inputs) == 1 else list(inputs),
        importance=tp.importance.GroupMagnitudeImportance(p=1 if importance == "l1" else 2),
        pruning_ratio=round_share(ratio, context.round, context.rounds),
        # Torch-Pruning removes heads only while it prunes the attention's group; with head dims kept
        # (prune_head_dims=False) this ratio is what makes it visit the group, it removes no dim.
        pruning_ratio_dict={m.qkv: 0.5 for m in attention.values()},
        ignored_layers=kept,
        forward_fn=_forward_through_exits if find_exits(model) else None,
        round_to=round_to,
        num_heads={m.qkv: m.heads for m in attention.values()},
        prune_num_heads=bool(attention),
        prune_head_dims=False,  # whole heads only: the other widths of an attention stay as they are
        head_pruning_ratio=round_share(heads, context.round, context.rounds) if attention else 0.0,
    )
    groups = _prunable_groups(model, pruner, kept)
    if not groups:
        raise UsageError(
            f"{type(model).__name__} has nothing to prune structurally: every width reaches the output layer, "
            "an embedding or an ignored layer (ignored: ...)"
        )
    _check_not_emptied(groups, ratio, round_to, attention, heads)
    before = snapshot(model)
    widths = {name: _width(layer) for name, layer in groups.items()}
    pruner.step()
    for attn in attention.values():
        attn.heads = pruner.num_heads[attn.qkv]  # the attribute the forward and the edits read
    report = {
        "ratio": ratio * context.round / context.rounds,
        "widths": {n: [widths[n], _width(groups[n])] for n in groups},  # this round's, before and after
        "heads": {n: a.heads for n, a in attention.items()},
        "macs_before": macs_before,
        "macs_after": count_macs(model, inputs),
    }
    return Stage(model, edits=resize_edits(before, model), report=report)


def _forward_through_exits(model: nn.Module, inputs) -> list:
    """Every exit's logits and the final head's: the dependency graph is traced from the outputs, and an
    exit head left out of it would keep its input width while its block narrows."""
    features = inputs[0] if isinstance(inputs, (list, tuple)) and len(inputs) == 1 else inputs
    return find_exits(model).collect(model, features)


# --- what is pruned -----------------------------------------------------------------------------------


def _kept_modules(model: nn.Module, ignored: list[str]) -> list[nn.Module]:
    """Modules whose outputs keep their width: the output layers, embeddings, `ignored` globs."""
    names = dict(model.named_modules())
    everything = weight_layers(model, [], include_head=True)
    body = {name for name, _ in weight_layers(model, [], include_head=False)}
    layers = [name for name, _ in everything]
    kept = [layer for name, layer in everything if name not in body]  # the output layer (models.addressing' rule)
    # The classifiers a technique added (early exits) keep their outputs too; their inputs narrow with their block.
    kept += [layer for name, layer in everything if name.startswith(added_head_prefixes(model))]
    for pattern in ignored:
        matched = [m for n, m in names.items() if n and fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise UsageError(f"ignored: pattern '{pattern}' matches no module. Layers: {', '.join(layers[:12])}")
        kept += matched
    kept += [m for m in names.values() if isinstance(m, nn.Embedding)]
    return kept


def _attention_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Attention modules whose heads can be removed: a fused `qkv` Linear and an int `heads`."""
    found = {
        n: m for n, m in model.named_modules() if isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "heads")
    }
    if not found:
        raise UsageError(f"heads: {type(model).__name__} has no attention layer (a module with `qkv` and `heads`)")
    return found


def _prunable_groups(model: nn.Module, pruner, kept: list[nn.Module]) -> dict[str, nn.Module]:
    """{name: root layer} of the groups the pruner will narrow. A group that would narrow a kept module,
    an embedding or a free parameter (a transformer's residual stream, pos_emb) is frozen by ignoring
    its root; so is a fused qkv whose heads are not pruned (its width is 3 x heads x head size)."""
    names = {m: n for n, m in model.named_modules()}
    heads = set(pruner.num_heads)
    frozen = set(map(id, kept))
    groups = {}
    for group in pruner.DG.get_all_groups(pruner.ignored_layers, pruner.root_module_types):
        root = group[0].dep.target.module
        narrowed = [d.target.module for d, _ in group if pruner.DG.is_out_channel_pruning_fn(d.handler)]
        touched = [d.target.module for d, _ in group]
        blocked = any(isinstance(m, (nn.Parameter, nn.Embedding)) for m in touched)
        blocked = blocked or any(id(m) in frozen for m in narrowed)  # a kept layer's inputs may narrow
        if isinstance(getattr(_parent(model, names.get(root, "")), "qkv", None), nn.Linear):
            blocked = blocked or not any(m in heads for m in narrowed)
        if blocked or root not in names:
            pruner.ignored_layers.append(root)
        else:
            groups[names[root]] = root
    return groups


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    parent, _, _ = name.rpartition(".")
    return model.get_submodule(parent) if name else None


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _check_not_emptied(
    groups: dict[str, nn.Module], ratio: float, round_to: int | None, attention: dict, heads: float
) -> None:
    """Exit 2 naming the layer when the ratio would leave a width with no unit (before any pruning)."""
    for name, layer in groups.items():
        if name.rpartition(".")[0] in attention:
            continue  # an attention's qkv loses whole heads only (checked below)
        width = _width(layer)
        left = int(width * (1.0 - ratio))
        left -= left % round_to if round_to else 0
        if left < 1:
            raise UsageError(
                f"ratio {ratio} removes every unit of layer '{name}' ({width} -> {left}); lower the ratio"
                + (" or round_to" if round_to else "")
                + f", or keep the layer whole (ignored: [{name}])"
            )
    for name, attn in attention.items():
        if attn.heads - math.ceil(heads * attn.heads) < 1:
            raise UsageError(f"heads {heads} removes every head of '{name}' ({attn.heads} heads); lower heads")
