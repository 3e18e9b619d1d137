"""Structural edits of a built model, recorded by `mlrun compress` and replayed whenever it is rebuilt.

A compressed model is the configured model plus a list of edits (`model_edits:` in a stage's
config.yaml), so training, resume, eval and export rebuild it from the config alone and load plain
safetensors weights: no pickled modules. Three kinds:

    {op: resize, module: mlp.0, attributes: {out_features: 96}, shapes: {weight: [96, 64], bias: [96]}}
    {op: factorize, module: head, rank: 12}
    {op: fold_norm, module: features.0, norm: features.1}

`resize` (structured pruning) sets a module's integer attributes and gives its own parameters and
buffers the recorded shapes; the weights loaded next fill them. `factorize` (low-rank) replaces a
Linear or 1x1 Conv2d by two thin layers, `module.0` (in -> rank) then `module.1` (rank -> out).
`fold_norm` (batch norm folded into the layer before it) gives `module` a bias and replaces `norm`
by an identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlrun.errors import UsageError

Snapshot = dict[str, tuple[dict[str, Any], dict[str, list[int]]]]


def apply_edits(
    model: nn.Module, edits: list[dict[str, Any]], defer_absent: bool = False, only: list[int] | None = None
) -> list[int]:
    """Replay `edits` (those at the indices `only`, if given) on a freshly built `model`, in order (in place).
    With `defer_absent`, the indices of edits of modules the model does not have yet are returned, not
    applied: layers a technique adds later (early-exit heads) are edited once they exist (`only`)."""
    deferred = []
    for index, edit in enumerate(edits):
        if only is not None and index not in only:
            continue
        op = edit.get("op")
        if op not in EDITS:
            raise UsageError(f"model_edits.{index}: unknown op '{op}' (expected {' or '.join(EDITS)})")
        if defer_absent and not _has_module(model, edit.get("module")):
            deferred.append(index)
            continue
        try:
            EDITS[op](model, edit)
        except AttributeError:
            raise UsageError(
                f"model_edits.{index}: the model has no module '{edit.get('module')}'; model_edits belong to "
                "the model they were recorded on (a compress stage's config.yaml)"
            ) from None
    return deferred


def _has_module(model: nn.Module, name: Any) -> bool:
    try:
        model.get_submodule(str(name))
    except AttributeError:
        return False
    return True


# --- resize -------------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> Snapshot:
    """Each module's integer attributes and the shapes of its own tensors, to diff after pruning."""
    return {name: (_int_attributes(module), _own_shapes(module)) for name, module in model.named_modules()}


def resize_edits(before: Snapshot, model: nn.Module) -> list[dict[str, Any]]:
    """The `resize` edits that turn a model shaped as `before` into `model`."""
    edits = []
    for name, module in model.named_modules():
        if name not in before:
            continue
        old_attributes, old_shapes = before[name]
        attributes, shapes = _int_attributes(module), _own_shapes(module)
        changed = {k: v for k, v in attributes.items() if old_attributes.get(k) != v}
        if changed or shapes != old_shapes:
            edits.append({"op": "resize", "module": name, "attributes": changed, "shapes": shapes})
    return edits


def _int_attributes(module: nn.Module) -> dict[str, Any]:
    found = {}
    for key, value in vars(module).items():
        if key.startswith("_") or isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, tuple) and value and all(isinstance(v, int) for v in value)):
            found[key] = list(value) if isinstance(value, tuple) else value
    return found


def _own_shapes(module: nn.Module) -> dict[str, list[int]]:
    tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    return {name: list(t.shape) for name, t in tensors if t is not None}


def _resize(model: nn.Module, edit: dict[str, Any]) -> None:
    module = model.get_submodule(edit["module"])
    for key, value in edit["attributes"].items():
        setattr(module, key, tuple(value) if isinstance(value, list) else value)
    for key, shape in edit["shapes"].items():
        old = getattr(module, key)
        fresh = torch.zeros(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(module, key, nn.Parameter(fresh, requires_grad=old.requires_grad))
        else:
            module.register_buffer(key, fresh, persistent=key not in module._non_persistent_buffers_set)


# --- factorize ----------------------------------------------------------------------------------------


def thin_pair(layer: nn.Module, rank: int) -> nn.Sequential:
    """Two thin layers shaped like `layer` through a bottleneck of `rank` (weights still to be set)."""
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1:
        first = nn.Conv2d(layer.in_channels, rank, 1, stride=layer.stride, padding=layer.padding, bias=False)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None)
    else:
        raise UsageError(f"cannot factorize {type(layer).__name__}: only Linear and 1x1 Conv2d layers")
    pair = nn.Sequential(first, second)
    return pair.to(device=layer.weight.device, dtype=layer.weight.dtype)


def replace_module(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)


def _factorize(model: nn.Module, edit: dict[str, Any]) -> None:
    replace_module(model, edit["module"], thin_pair(model.get_submodule(edit["module"]), int(edit["rank"])))


# --- fold_norm ----------------------------------------------------------------------------------------


def _fold_norm(model: nn.Module, edit: dict[str, Any]) -> None:
    layer = model.get_submodule(edit["module"])
    model.get_submodule(edit["norm"])  # it must exist: an AttributeError names the edit
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
    replace_module(model, edit["norm"], nn.Identity())


EDITS = {"resize": _resize, "factorize": _factorize, "fold_norm": _fold_norm}
