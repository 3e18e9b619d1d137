"""LoRA through peft: low-rank adapters on chosen layers; the rest of the model is frozen.

    techniques:
      - {name: lora, r: 8, alpha: 16, dropout: 0.05, target_modules: ["qkv", "proj"], trainable: ["head.*"]}

peft's `inject_adapter_in_model` replaces each targeted layer in place (the model object stays the
one the loop, checkpoints and exports know), so a checkpoint holds the adapters next to the frozen
base weights and the optimizer state of the adapters alone, and a resume continues exactly.
`mlrun export` merges the adapters into the base weights in fp32 (`merge_adapters`) and compares
the merged model with the adapted one. Needs peft: pip install 'mlrun[transformers]'.
"""

from __future__ import annotations

import fnmatch
import sys
from typing import Annotated

from pydantic import Field, PositiveFloat, PositiveInt
from torch import nn

from mlrun.errors import UsageError
from mlrun.models.addressing import ADDED_HEADS, HEAD_NAMES, added_head_prefixes, check_patterns, matching
from mlrun.registry import techniques

# Layer types peft's LoRA adapts (transformers' GPT-2 Conv1D is matched by name: no import needed).
ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _peft():
    from mlrun.notices import import_quietly

    try:
        return import_quietly("peft")  # peft imports torchao
    except ImportError:
        raise UsageError("technique 'lora' needs peft: pip install 'mlrun[transformers]'") from None


def adaptable_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and (isinstance(m, ADAPTABLE) or type(m).__name__ == "Conv1D")]


def resolve_targets(model: nn.Module, patterns: list[str] | None) -> list[str]:
    """Full names of the layers to adapt; every pattern must match one (peft would ignore it silently).

    A pattern is a glob over full module names ('blocks.*.attn.qkv') or, without glob characters,
    a layer name as peft takes it ('qkv' matches every module whose name ends in '.qkv').
    """
    names = adaptable_modules(model)
    if patterns is None:  # every linear layer but the output layer, like peft's 'all-linear'
        modules = dict(model.named_modules())
        heads = (*HEAD_NAMES, *ADDED_HEADS)
        return [n for n in names if isinstance(modules[n], nn.Linear) and n.split(".")[0] not in heads]
    chosen = []
    for pattern in patterns:
        found = [n for n in names if fnmatch.fnmatchcase(n, pattern) or n.endswith(f".{pattern}")]
        if not found:
            shown = ", ".join(names[:30]) + (f", ... {len(names) - 30} more" if len(names) > 30 else "")
            raise UsageError(
                f"techniques.lora.target_modules: '{pattern}' matches no layer LoRA can adapt. Layers: {shown}"
            )
        chosen.extend(n for n in found if n not in chosen)
    return chosen


@techniques.register("lora", freezes_the_rest=True)
def lora(
    model: nn.Module,
    /,
    *,
    r: PositiveInt = 8,
    alpha: PositiveFloat = 16.0,
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    target_modules: list[str] | None = None,
    trainable: list[str] = [],  # noqa: B006 - never mutated
) -> None:
    """Low-rank adapters (peft LoRA) on the target layers; every other parameter is frozen.

    Args:
        r: rank of each adapter (A: r x in, B: out x r).
        alpha: scaling numerator; the update is (alpha / r) * B @ A.
        dropout: dropout on the adapter's input.
        target_modules: layers to adapt: globs of module names or layer names ('qkv'); default every linear
            layer except the output layer.
        trainable: glob patterns of other parameters that keep training, e.g. ['head.*'] for a new head.
    """
    peft = _peft()
    targets = resolve_targets(model, target_modules)
    if not targets:
        raise UsageError("techniques.lora: the model has no linear layer besides its head; name target_modules")
    total = sum(p.numel() for p in model.parameters())
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    peft.inject_adapter_in_model(config, model)  # in place; freezes every non-adapter parameter
    names = [n for n, _ in model.named_parameters()]
    check_patterns(names, trainable, "techniques.lora.trainable")
    added = added_head_prefixes(model)  # a technique's classifiers train like a new head
    for name, param in model.named_parameters():
        if matching([name], trainable) or (name.startswith(added) and "lora_" not in name):
            param.requires_grad_(True)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"mlrun: lora: r={r} on {len(targets)} layers; {count:,} trainable parameters of "
        f"{total:,} ({count / total:.2%} of the base model)",
        file=sys.stderr,  # build-time notes stay off stdout, which may carry --json
        flush=True,
    )
    return None


def has_adapters(model: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in model.named_parameters())


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into its base layer (in fp32) and put the plain layer back; returns how many."""
    BaseTunerLayer = _peft().tuners.tuners_utils.BaseTunerLayer

    model.float()  # merging in low precision would round the small low-rank update away
    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in adapted:
        module.merge(safe_merge=True)  # safe_merge: refuses NaN/inf instead of writing them
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return len(adapted)
