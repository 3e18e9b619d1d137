"""Parts of a model that techniques and parameter groups address: parameters by glob, blocks, the head.

A model declares its repeated layers as `self.blocks` (an nn.ModuleList, input side first) and its
output layer under one of HEAD_NAMES; mlrun's models do both. Patterns are shell-style globs over
parameter names as `model.named_parameters()` gives them (`blocks.0.attn.qkv.weight`), with
`blocks.*` matching every block.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from mlrun.errors import UsageError

# Attribute names of a model's output layer, in the order looked for (mlrun, transformers, torchvision, timm).
HEAD_NAMES = ("head", "classifier", "score", "lm_head", "fc")
# Classifiers a technique adds beside the output layer (early-exit heads, built before init_from so that
# their trained weights load): heads too, for freeze's but_head, lp_ft's probe and LoRA, whatever the
# order the techniques are listed in.
ADDED_HEADS = ("exits",)
# Attributes that give a block's output width, looked up from its last layer backwards.
WIDTH_ATTRIBUTES = ("num_features", "out_channels", "out_features", "normalized_shape", "embedding_dim")


def declared_blocks(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):  # timm's ViTs keep an nn.Sequential
        raise UsageError(
            f"technique needs the model's repeated blocks, but {type(model).__name__} has no `blocks` ModuleList; "
            "keep the repeated layers of your model in self.blocks"
        )
    return blocks


def block_width(block: nn.Module, index: int, user: str) -> int:
    """The width of block `index`'s output (features, channels), read from its last layer that has one."""
    for layer in reversed(list(block.modules())):
        for name in WIDTH_ATTRIBUTES:
            value = getattr(layer, name, None)
            if isinstance(value, int) or (isinstance(value, tuple) and len(value) == 1):
                return value if isinstance(value, int) else value[0]
    raise UsageError(f"{user}: cannot tell the output width of block {index} ({type(block).__name__})")


def evenly_spaced_blocks(student_blocks: int, teacher_blocks: int) -> list[int]:
    """The teacher block each of a shallower student's blocks pairs with: floor(i * T / S), from the
    first (DistilBERT: every other layer for half the depth)."""
    return [i * teacher_blocks // student_blocks for i in range(student_blocks)]


def head_prefix(model: nn.Module) -> str:
    """The parameter-name prefix of the model's output layer, e.g. 'head.'."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
            return f"{name}."
    raise UsageError(
        f"{type(model).__name__} has no output layer named {' | '.join(HEAD_NAMES)}; "
        "name the parameters to keep with patterns instead"
    )


def added_head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The parameter-name prefixes of the classifiers techniques added (ADDED_HEADS), e.g. ('exits.',)."""
    return tuple(f"{name}." for name in ADDED_HEADS if isinstance(getattr(model, name, None), nn.Module))


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The output layer's prefix and those of the classifiers techniques added: every head, e.g. ('head.', 'exits.')."""
    return (head_prefix(model), *added_head_prefixes(model))


def matching(names: list[str], patterns: list[str]) -> list[str]:
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def check_patterns(names: list[str], patterns: list[str], key: str) -> None:
    """Every pattern must match at least one name: a typo must not silently do nothing."""
    for pattern in patterns:
        if not matching(names, [pattern]):
            shown = ", ".join(names[:12]) + (f", ... {len(names) - 12} more" if len(names) > 12 else "")
            raise UsageError(f"{key}: pattern '{pattern}' matches no parameter. Parameters: {shown}")


def block_index(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> index of the declared block that holds it (blocks may alias modules elsewhere)."""
    return {id(p): i for i, block in enumerate(declared_blocks(model)) for p in block.parameters()}


def weight_layers(model: nn.Module, patterns: list[str], include_head: bool) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the Linear and Conv layers compression acts on: those whose module name matches
    `patterns` (all when empty), without the output layer unless `include_head`."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    check_patterns([n for n, _ in layers], patterns, "layers")
    if patterns:
        layers = [(n, m) for n, m in layers if matching([n], patterns)]
    if not include_head and layers:
        try:
            head = head_prefix(model).rstrip(".")
        except UsageError:
            head = layers[-1][0]  # no declared head: the last layer is the output
        layers = [(n, m) for n, m in layers if n != head and not n.startswith(f"{head}.")]
    return layers
