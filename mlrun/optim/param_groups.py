"""Parameter groups: decay / no-decay, then per-pattern lr scale and weight decay, then layer-wise lr decay.

Every optimizer factory starts from `param_groups(model, weight_decay)`: weight decay on matrices
only, never on biases or norm weights. `regroup` then splits those groups by the config's
`optimizer.param_groups` rules and `optimizer.layer_decay`, scaling each new group's lr; the
schedule multiplies every group's own base lr, so the ratios hold through warm-up and decay.

    mlrun validate configs/finetune_text_layer_decay.yaml --print    # shows the groups
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlrun.config.schema import OptimizerSpec, ParamGroupRule
from mlrun.errors import UsageError
from mlrun.models.addressing import block_index, check_patterns, matching


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: tensors with 2+ dimensions (decayed) and the rest (biases, norm scales)."""
    return decay_groups([p for p in model.parameters() if p.requires_grad], weight_decay)  # tied weights once


def decay_groups(params: list, weight_decay: float) -> list[dict]:
    """`params` as param_groups splits a model's: 2+ dimensions decayed, the rest not; empty groups left out."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def parameters_beside(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """What the optimizer steps that is not the model's (an objective's own parameters: distill's
    projections), in group order."""
    in_model = {id(p) for p in model.parameters()}
    return [p for group in optimizer.param_groups for p in group["params"] if id(p) not in in_model]


def regroup(
    optimizer: torch.optim.Optimizer, model: nn.Module, spec: OptimizerSpec, refuse_dead_rules: bool = True
) -> None:
    """Split the optimizer's groups in place by `spec.param_groups` and `spec.layer_decay` (before any step).
    `refuse_dead_rules`: exit 2 on a rule earlier rules leave nothing to (a fresh start; a run recorded
    before that check still resumes and evaluates)."""
    if not spec.param_groups and spec.layer_decay is None:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    in_optimizer = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    for index, rule in enumerate(spec.param_groups):
        # Frozen parameters are not in the optimizer, so a rule naming only them is a mistake too.
        check_patterns(in_optimizer, rule.match, f"optimizer.param_groups[{index}].match (trainable parameters)")
    if refuse_dead_rules:
        _check_every_rule_applies(in_optimizer, spec.param_groups)
    depth = layer_depths(model) if spec.layer_decay is not None else {}
    top = max(depth.values(), default=0)
    split: dict[tuple, dict] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            rule_index, rule = _first_rule(names[id(param)], spec.param_groups)
            layer = depth.get(id(param))
            key = (group.get("name", "group"), rule_index, layer)
            if key not in split:
                split[key] = _new_group(group, rule, layer, spec.layer_decay, top)
            split[key]["params"].append(param)
    optimizer.param_groups.clear()
    for group in split.values():
        optimizer.add_param_group(group)


def _check_every_rule_applies(names: list[str], rules: list[ParamGroupRule]) -> None:
    """The first matching rule wins: a rule whose parameters all fall to earlier rules would do nothing."""
    won = {_first_rule(name, rules)[0] for name in names}
    for index, rule in enumerate(rules):
        if index not in won:
            earlier = next(i for i in sorted(won - {None}) if i < index and _shadows(rules[i], rule, names))
            raise UsageError(
                f"optimizer.param_groups[{index}] ({'|'.join(rule.match)}) gets no parameter: every one it matches "
                f"is taken by the earlier rule [{earlier}] ({'|'.join(rules[earlier].match)}), as the first "
                "matching rule wins; put the narrower rule first"
            )


def _shadows(earlier: ParamGroupRule, rule: ParamGroupRule, names: list[str]) -> bool:
    return any(matching([n], earlier.match) and matching([n], rule.match) for n in names)


def _first_rule(name: str, rules: list[ParamGroupRule]) -> tuple[int | None, ParamGroupRule | None]:
    for index, rule in enumerate(rules):
        if matching([name], rule.match):
            return index, rule
    return None, None


def _new_group(group: dict, rule: ParamGroupRule | None, layer: int | None, layer_decay, top: int) -> dict:
    scale = rule.lr_scale if rule else 1.0
    if layer is not None:
        scale *= layer_decay ** (top - layer)
    decayed = group["weight_decay"] > 0 or group.get("name") == "decay"
    weight_decay = rule.weight_decay if rule and rule.weight_decay is not None and decayed else group["weight_decay"]
    label = [group.get("name", "group")]
    if rule:
        label.append(f"{'|'.join(rule.match)}")
    if layer is not None:
        label.append(f"layer {layer}/{top}")
    return {
        **{k: v for k, v in group.items() if k != "params"},
        "params": [],
        "lr": group["lr"] * scale,
        "weight_decay": weight_decay,
        "name": " ".join(label),
    }


def layer_depths(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> layer for layer-wise decay: 0 embeddings, 1..n the blocks, n + 1 the rest above.

    Parameters outside the blocks count as embeddings when registered before the first block
    (token and position embeddings, a stem) and as the top (final norm, head) when after.
    """
    where = block_index(model)
    blocks = max(where.values(), default=-1) + 1
    depths, seen_block = {}, False
    for param in model.parameters():
        if id(param) in where:
            seen_block = True
            depths[id(param)] = where[id(param)] + 1
        else:
            depths[id(param)] = blocks + 1 if seen_block else 0
    return depths


@dataclass(frozen=True)
class GroupRow:
    """One optimizer group as `mlrun validate --print` shows it."""

    name: str
    tensors: int
    parameters: int
    lr: float
    weight_decay: float


def describe_groups(optimizer: torch.optim.Optimizer, base_lrs: list[float]) -> list[GroupRow]:
    """Each group with its peak lr (`base_lrs`: the schedule's; the group's own lr may be mid warm-up)."""
    return [
        GroupRow(
            g.get("name", f"group {i}"),
            len(g["params"]),
            sum(p.numel() for p in g["params"]),
            lr,
            g.get("weight_decay", 0.0),
        )
        for i, (g, lr) in enumerate(zip(optimizer.param_groups, base_lrs))
    ]
