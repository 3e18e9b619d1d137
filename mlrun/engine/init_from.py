"""`init_from:` copy pretrained weights into a freshly built model, before techniques and the optimizer.

Sources are local files only: an mlrun run (final, best, latest or step-N weights), a .safetensors
or PyTorch file (read with weights_only), or a folder written by transformers' save_pretrained.
Source keys are renamed by `prefix`, model keys matching `exclude` keep their fresh initialisation
(a new head), and every key ends up in exactly one list of the report: loaded, missing, unexpected,
skipped for a shape mismatch, excluded, or tied (loaded through the key it shares its tensor with).
The report is printed and recorded in manifest.json.

    mlrun train configs/finetune_digits_cnn.yaml
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlrun.config.schema import InitFrom
from mlrun.errors import UsageError

# Files a save_pretrained folder (or an mlrun run / checkpoint folder) may hold, in the order tried.
FOLDER_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def resolve_source(spec: InitFrom) -> Path:
    """The weights file (or shard index) that `spec` names; a clear usage error when absent."""
    if spec.run is not None:
        return _run_weights(Path(spec.run), spec.checkpoint)
    path = Path(spec.path)
    if path.is_dir():
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise UsageError(f"init_from.path: folder '{path}' holds none of {', '.join(FOLDER_FILES)}")
    if not path.is_file():
        raise UsageError(f"init_from.path: '{path}' does not exist (paths are relative to the working directory)")
    return path


def _run_weights(run: Path, checkpoint: str) -> Path:
    if not (run / "config.yaml").is_file():
        raise UsageError(f"init_from.run: '{run}' is not an mlrun run directory (no config.yaml); train it first")
    if (run / "export.json").is_file():
        raise UsageError(
            f"init_from.run: '{run}' is an export folder, not a run: name the run it came from, or a safetensors "
            "export's file with init_from.path"
        )
    from mlrun.engine.checkpoint import checkpoint_dir, latest_checkpoint

    if checkpoint in ("final", "best"):
        path = run / ("model.safetensors" if checkpoint == "final" else "best.safetensors")
        hint = "finish training it" if checkpoint == "final" else _why_no_best(run)
    elif checkpoint == "latest":
        latest = latest_checkpoint(run)
        path = (latest or run / "checkpoints" / "none") / "model.safetensors"
        hint = "it has no checkpoint yet"
    elif checkpoint.startswith("step-") and checkpoint[5:].isdigit():
        path = checkpoint_dir(run, int(checkpoint[5:])) / "model.safetensors"
        hint = f"its checkpoints are {', '.join(p.name for p in _checkpoints(run)) or 'none'}"
    else:
        raise UsageError(f"init_from.checkpoint: '{checkpoint}' is not final, best, latest or step-N")
    if not path.is_file():
        raise UsageError(f"init_from: run '{run}' has no {checkpoint} weights ({path} is missing); {hint}")
    return path


def _why_no_best(run: Path) -> str:
    import yaml

    try:
        best = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("train", {}).get("best")
    except (OSError, yaml.YAMLError, AttributeError):  # advice only
        best = None
    if best:
        return "it sets train.best but has not evaluated yet (stopped early?): resume it, or use checkpoint: latest"
    return "train it with train.best set"


def _checkpoints(run: Path) -> list[Path]:
    from mlrun.engine.checkpoint import list_checkpoints

    return list_checkpoints(run)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / PyTorch file, or of every shard a *.index.json names."""
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        from mlrun.models.weights_file import read_weights

        return read_weights(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except Exception as exc:  # a file torch cannot read, or one that needs arbitrary unpickling
        # Not torch's advice to unpickle with weights_only=False: init_from never runs a file's code.
        text = str(exc).strip()
        cause = (
            "not tensors alone: an ONNX graph, or pickled objects, which init_from does not unpickle"
            if "Weights only load failed" in text
            else (text.splitlines()[0] if text else type(exc).__name__)
        )
        raise UsageError(
            f"init_from: cannot read '{path}' as PyTorch weights ({cause}); give a .safetensors or PyTorch state "
            "dict file, or a run (init_from: {run: ...})"
        ) from None
    return _state_in(loaded, path)


def _state_in(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict itself, or the one a training checkpoint keeps under a usual key."""
    if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            if isinstance(loaded.get(key), dict):
                return _state_in(loaded[key], path)
    raise UsageError(f"init_from: '{path}' holds no state dict of tensors (found {type(loaded).__name__})")


def rename(keys: list[str], prefix: dict[str, str]) -> dict[str, str]:
    """Source key -> model key; the longest matching source prefix wins."""
    ordered = sorted(prefix.items(), key=lambda item: -len(item[0]))
    renamed = {}
    for key in keys:
        new = key
        for old, replacement in ordered:
            if key.startswith(old):
                new = replacement + key[len(old) :]
                break
        renamed[key] = new
    return renamed


def match_state(model: nn.Module, source: dict[str, torch.Tensor], spec: InitFrom) -> tuple[dict, dict]:
    """(model key -> tensor to load, the report's lists) without touching the model."""
    target = model.state_dict()
    for old in spec.prefix:  # a mapping or pattern that names nothing is a typo, not a choice
        if not any(key.startswith(old) for key in source):
            raise UsageError(
                f"init_from.prefix: no key of the source begins with '{old}' (source keys look like "
                f"{_few(list(source), 3)})"
            )
    for pattern in spec.exclude:
        if not any(fnmatch.fnmatchcase(key, pattern) for key in target):
            raise UsageError(
                f"init_from.exclude: '{pattern}' matches no tensor of the model (model keys look like "
                f"{_few(list(target), 3)})"
            )
    names = rename(list(source), spec.prefix)
    by_model_key = {new: source[old] for old, new in names.items()}
    excluded = [k for k in target if any(fnmatch.fnmatchcase(k, p) for p in spec.exclude)]
    to_load, shape_skipped, missing = {}, [], []
    for key, tensor in target.items():
        if key in excluded:
            continue
        if key not in by_model_key:
            missing.append(key)
        elif by_model_key[key].shape != tensor.shape:
            shape_skipped.append({"key": key, "model": list(tensor.shape), "source": list(by_model_key[key].shape)})
        else:
            to_load[key] = by_model_key[key]
    # A key tied to a loaded one (a GPT's tok_emb.weight sharing the head's tensor; the source stored it
    # once) is loaded through it, not missing.
    loaded_storage = {target[key].untyped_storage().data_ptr() for key in to_load}
    tied = [key for key in missing if target[key].untyped_storage().data_ptr() in loaded_storage]
    missing = [key for key in missing if key not in tied]
    unexpected = [old for old, new in names.items() if new not in target]
    report = {
        "missing": missing,
        "unexpected": unexpected,
        "skipped_shape": shape_skipped,
        "excluded": excluded,
        "tied": tied,
    }
    return to_load, report


def load_pretrained(model: nn.Module, spec: InitFrom) -> dict[str, Any]:
    """Copy the matching tensors of `spec`'s source into `model`; returns the report for manifest.json."""
    path = resolve_source(spec)
    source = read_state(path)
    to_load, report = match_state(model, source, spec)
    params = dict(model.named_parameters(remove_duplicate=False))
    if not any(key in params for key in to_load):  # batch-norm counters alone are a fresh model, not a start
        raise UsageError(_nothing_matched(model, source, spec, path, report))
    target = model.state_dict()  # tensors sharing the parameters' storage: copy_ writes the model
    shrink_perturb = (spec.shrink, spec.perturb) != (1.0, 0.0)
    mixed: set[int] = set()  # tied weights appear under two keys: mix each parameter once
    with torch.no_grad():
        for key, tensor in to_load.items():
            if key in params and shrink_perturb:
                if id(params[key]) in mixed:
                    continue
                mixed.add(id(params[key]))
                # target[key] still holds the fresh initialisation the model was built with.
                tensor = spec.shrink * tensor.to(target[key].dtype) + spec.perturb * target[key]
            target[key].copy_(tensor)  # casts to the model's dtype
    total = sum(p.numel() for p in model.parameters())
    # Tied weights appear under two keys; count each parameter once.
    loaded_ids = {id(params[k]) for k in to_load if k in params}
    loaded_elements = sum(p.numel() for p in model.parameters() if id(p) in loaded_ids)
    fraction = loaded_elements / total if total else 0.0
    full = {"source": str(path), "loaded": sorted(to_load), "loaded_fraction": round(fraction, 4), **report}
    if shrink_perturb:
        full["shrink_perturb"] = {"shrink": spec.shrink, "perturb": spec.perturb}
    print(f"mlrun: init_from: {describe(full)}", file=sys.stderr, flush=True)  # stdout may be --json
    if fraction < spec.warn_below:
        print(
            f"mlrun: warning: init_from loaded only {fraction:.1%} of the model's parameters from {path}; "
            + _why_so_little(report, path),
            file=sys.stderr,
            flush=True,
        )
    elif report["missing"] and _stage_edits(path):  # e.g. batch norms a fold_batchnorm stage folded away
        print(
            f"mlrun: warning: init_from left {len(report['missing'])} of the model's tensors fresh "
            f"({', '.join(report['missing'][:3])}) beside the stage's weights, a different function; "
            + _why_so_little(report, path),
            file=sys.stderr,
            flush=True,
        )
    return full


def _stage_edits(path: Path) -> list[str]:
    """The kinds of structural edits the source's config.yaml records (a compress stage's), if any."""
    import yaml

    config = path.parent / "config.yaml"
    try:
        recorded = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (OSError, yaml.YAMLError):  # advice only: a config it cannot read gives the general advice
        recorded = None
    edits = recorded.get("model_edits") if isinstance(recorded, dict) else None
    return sorted({edit.get("op", "edit") for edit in edits if isinstance(edit, dict)}) if edits else []


def _why_so_little(report: dict[str, Any], path: Path) -> str:
    """What to check: a compress stage's changed layers, the shapes when same-named tensors differ,
    otherwise the key mapping."""
    if kinds := _stage_edits(path):
        return (
            f"the source is a compress stage whose layers were changed ({', '.join(kinds)} in its config.yaml's "
            f"model_edits), which this model does not have: train from the stage's own config "
            f"(mlrun train {path.parent / 'config.yaml'} name=<new run> ...) to build those layers, then init_from "
            "loads them all"
        )
    shapes = report["skipped_shape"]
    if shapes and len(shapes) >= len(report["missing"]):
        first = shapes[0]
        return (
            f"{len(shapes)} tensors have the same names but other shapes (e.g. {first['key']}: {first['source']} "
            f"in the source, {first['model']} in this model): the model is built with other settings than the "
            "source's (compare the model sections); exclude those keys to start them fresh on purpose"
        )
    return "check init_from.prefix and exclude (manifest.json lists missing and unexpected keys)"


def describe(report: dict[str, Any]) -> str:
    """One line: what was loaded from where, and what was not."""
    share = f"{report['loaded_fraction']:.1%} of parameters"
    parts = [f"loaded {len(report['loaded'])} tensors ({share}) from {report['source']}"]
    if mix := report.get("shrink_perturb"):
        parts.append(f"parameters shrunk to {mix['shrink']} x pretrained + {mix['perturb']} x fresh")
    for key in ("missing", "unexpected", "excluded", "tied"):
        if report[key]:
            parts.append(f"{key} {len(report[key])} ({_few(report[key])})")
    if report["skipped_shape"]:
        shapes = [f"{s['key']} {s['source']}->{s['model']}" for s in report["skipped_shape"]]
        parts.append(f"skipped for shape {len(shapes)} ({_few(shapes)})")
    return "; ".join(parts)


def _few(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... {len(items) - limit} more" if len(items) > limit else "")


def _nothing_matched(model: nn.Module, source: dict, spec: InitFrom, path: Path, report: dict) -> str:
    model_keys = list(model.state_dict())
    if report["excluded"] and not report["missing"] and not report["skipped_shape"]:
        return (
            f"init_from: nothing loaded from {path}: init_from.exclude {spec.exclude} leaves out every parameter "
            "the source has; exclude only the layers to start fresh (e.g. ['head.*'])"
        )
    if report["skipped_shape"]:
        return f"init_from: no parameter loaded from {path}: {_why_so_little(report, path)}."
    return (
        f"init_from: nothing loaded from {path}: no key of the source names a tensor of the model. Model keys "
        f"look like {_few(model_keys, 3)}; source keys look like {_few(list(source), 3)}. Map them with "
        f"init_from.prefix (e.g. {_prefix_hint(list(source), set(model_keys))}), or check the source."
    )


def _prefix_hint(source_keys: list[str], model_keys: set[str]) -> dict[str, str]:
    """A prefix mapping that would match: the source's first name part dropped (an export's 'model.') or the
    model's added; a generic example when neither does."""
    for key in source_keys:
        head, _, rest = key.partition(".")
        if rest in model_keys:
            return {f"{head}.": ""}
        for model_key in model_keys:
            if model_key.endswith("." + key):
                return {"": model_key[: -len(key)]}
    return {"bert.": ""}
