"""Reading a config: YAML with line numbers, `base:` chains, `key=value` overrides, validation.

    config = load_config("configs/quickstart.yaml", ["train.epochs=3"])

Every key keeps where it came from (file:line, or the override that set it), so an error can say
`configs/x.yaml:12: optimizer.lrr: unknown setting of optimizer 'adamw'. Did you mean 'lr'?`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlrun.config.errors import SourceMap, validation_error_message
from mlrun.config.schema import ExperimentConfig, ParamSpec
from mlrun.errors import UsageError

KeyPath = tuple[str | int, ...]


def load_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), components: tuple[str, ...] | None = None
) -> ExperimentConfig:
    """The validated config of `path` with its base chain and overrides applied. A run's own config.yaml
    (beside its manifest.json) is read as recorded: checks added since the run was made do not lock it out.
    `components` names the sections whose components are looked up in their registries (default all): an
    export's runtime file holds the model, so predicting with it imports no user model code."""
    data, sources = resolve_raw(path, overrides)
    path = Path(path)
    recorded = path.name == "config.yaml" and (path.parent / "manifest.json").is_file()
    return validate_raw(data, sources, recorded=recorded, components=components)


def resolve_raw(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], SourceMap]:
    """The merged mapping before validation, and where each key came from."""
    sources = SourceMap()
    data = _load_with_bases(Path(path), sources, chain=())
    for text in overrides:
        apply_override(data, sources, text)
    return data, sources


def validate_raw(
    data: dict[str, Any], sources: SourceMap, recorded: bool = False, components: tuple[str, ...] | None = None
) -> ExperimentConfig:
    # Imported here: components pull in the registries and, through them, torch.
    from mlrun.config.components import check_components

    try:
        config = ExperimentConfig.model_validate(data, context={"recorded": recorded})
    except ValidationError as exc:
        raise UsageError(validation_error_message(exc, sources, ExperimentConfig)) from None
    check_components(config, sources, components)
    return config


# --- YAML with line numbers -------------------------------------------------------------------


class ConfigLoader(yaml.SafeLoader):
    """The safe loader, reading `1e-2` as a number as YAML 1.2 does (PyYAML's YAML 1.1 needs `1.0e-2`,
    and would otherwise store optimizer.lr as the string '1e-2' in the run's config.yaml)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(path: Path, sources: SourceMap) -> dict[str, Any]:
    """A YAML mapping read with the safe loader; records `file:line` for every key."""
    if path.is_dir():
        inside = " (a run's is its config.yaml)" if (path / "config.yaml").is_file() else ""
        raise UsageError(f"config file '{path}' is a folder; give the YAML file itself{inside}")
    if not path.is_file():
        raise UsageError(f"config file '{path}' not found. Check the path (relative to the working directory).")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=ConfigLoader)
    except yaml.YAMLError as exc:
        raise UsageError(f"{_yaml_where(path, exc)}: invalid YAML: {_yaml_problem(exc)}") from None
    if node is None:
        raise UsageError(
            f"{path}: the file is empty; a config needs name, model, data and train (`mlrun init` writes one)"
        )
    if not isinstance(node, yaml.MappingNode):
        raise UsageError(f"{path}:{node.start_mark.line + 1}: a config must be a mapping of keys to values")
    return _to_python(node, path, (), sources)


def _to_python(node: yaml.Node, path: Path, key_path: KeyPath, sources: SourceMap) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(" ").construct_object(key_node)
            where = f"{path}:{key_node.start_mark.line + 1}"
            if key in out:
                raise UsageError(f"{where}: {_dotted(key_path + (key,))}: duplicate key")
            sources.set(key_path + (key,), where)
            out[key] = _to_python(value_node, path, key_path + (key,), sources)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            sources.set(key_path + (index,), f"{path}:{item.start_mark.line + 1}")
            items.append(_to_python(item, path, key_path + (index,), sources))
        return items
    return yaml.SafeLoader(" ").construct_object(node, deep=True)


def _yaml_where(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"{path}:{mark.line + 1}" if mark else str(path)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return f"{problem} ({context})" if context else problem


# --- base chains ------------------------------------------------------------------------------


def _load_with_bases(path: Path, sources: SourceMap, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    own_sources = SourceMap()
    data = read_yaml(path, own_sources)
    base = data.get("base")
    if base is None:
        sources.update(own_sources)
        return data
    if not isinstance(base, str):
        raise UsageError(f"{own_sources.where(('base',))}: base: expected a path to a YAML file, got {base!r}")
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if base_path.is_dir():
        raise UsageError(f"{own_sources.where(('base',))}: base: '{base}' is a folder; name the YAML file it extends")
    if not base_path.is_file():
        raise UsageError(f"{own_sources.where(('base',))}: base: '{base}' not found (looked for {base_path}).")
    if base_path.resolve() in (*chain, resolved):
        cycle = " -> ".join(str(p) for p in (*chain, resolved, base_path.resolve()))
        raise UsageError(
            f"{own_sources.where(('base',))}: base: cycle of configs: {cycle}. Remove one of the base: keys."
        )
    merged = _load_with_bases(base_path, sources, (*chain, resolved))
    _deep_merge(merged, data, sources, own_sources, ())
    merged["base"] = None
    return merged


def _deep_merge(into: dict[str, Any], top: dict[str, Any], sources: SourceMap, top_sources: SourceMap, at: KeyPath):
    """Mappings merge key by key; anything else (lists included) replaces. A component section that names
    another factory (`model: {name: cnn}` over a base's mlp) keeps only the base's keys the new one reads."""
    for key, value in top.items():
        here = at + (key,)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            if not at:
                _leave_other_factorys_settings(into, key, value, sources)
            sources.set(here, top_sources.where(here))
            _deep_merge(into[key], value, sources, top_sources, here)
        else:
            into[key] = value
            sources.drop_under(here)
            sources.update(top_sources.under(here))


def _leave_other_factorys_settings(into: dict[str, Any], key: str, top: dict[str, Any], sources: SourceMap) -> None:
    """Drop from the base's section the settings of its factory that the one `top` names does not take
    (hidden_sizes of an mlp under a cnn); the section's own keys (batch_size) and shared settings stay."""
    from mlrun.config.errors import model_in
    from mlrun.registry import REGISTRIES

    spec_type = (
        model_in(ExperimentConfig.model_fields[key].annotation) if key in ExperimentConfig.model_fields else None
    )
    old, new = into[key].get("name"), top.get("name")
    if getattr(spec_type, "registry_kind", None) is None or old is None or new is None or old == new:
        return
    try:
        read = {*spec_type.model_fields, *REGISTRIES[spec_type.registry_kind].settings_model(new).model_fields}
    except UsageError:  # an unknown name: validation names it
        return
    left = [setting for setting in into[key] if setting not in read]
    for setting in left:
        del into[key][setting]
        sources.drop_under((key, setting))
    if left:
        print(
            f"mlrun: note: {key}: the base's {', '.join(left)} (settings of '{old}') do not apply to '{new}'",
            file=sys.stderr,
        )


# --- overrides --------------------------------------------------------------------------------


# Mappings whose keys are themselves dotted config paths (a search space names the keys it searches).
DOTTED_KEYS = {("tune", "space")}


def override_key(text: str) -> str:
    """The dotted key an override sets: `optimizer.lr` of `optimizer.lr=1e-3`."""
    return text.partition("=")[0].strip()


def apply_override(data: dict[str, Any], sources: SourceMap, text: str) -> None:
    """Apply one `dotted.key=value` override; the value is parsed as YAML."""
    key, sep, raw_value = text.partition("=")
    origin = f"override '{text}'"
    if not sep or not key.strip():
        raise UsageError(f"{origin}: expected key=value, e.g. train.epochs=3 or optimizer.lr=1e-3")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise UsageError(f"{origin}: '{key}' is not a dotted key path like optimizer.lr")
    if parts[0] == "base":  # it was silently ignored: bases are merged before any override applies
        raise UsageError(
            f"{origin}: base is read from the file, before overrides apply; write a config with "
            f"base: {(raw_value.strip() if len(parts) == 1 else '') or '<file>'} and this file's keys, or pass that "
            "base's file itself"
        )
    try:
        value = yaml.load(raw_value, Loader=ConfigLoader) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise UsageError(f"{origin}: the value is not valid YAML: {_yaml_problem(exc)}") from None
    target: Any = data
    path: KeyPath = ()
    index = 0
    while index < len(parts) - 1:
        if path in DOTTED_KEYS and isinstance(target, dict):  # `tune.space.optimizer.lr.high=...`
            parts = [*parts[:index], *_dotted_key(target, parts[index:])]
            if index == len(parts) - 1:
                _check_new_entry(parts[-1], _dotted(path), origin, target)
                break
        part, index = parts[index], index + 1
        step: str | int = int(part) if isinstance(target, list) and part.isdigit() else part
        path += (step,)
        if isinstance(target, dict) and step not in target and parts[index].isdigit():  # data.augment.0 of none
            raise UsageError(
                f"{origin}: '{_dotted(path)}' holds no list here, so '{key}' does not exist; set the whole list: "
                f"{_dotted(path)}=[...]"
            )
        if isinstance(target, dict):
            target = target.setdefault(step, {})
        elif isinstance(target, list) and isinstance(step, int) and step < len(target):
            target = target[step]
        elif isinstance(target, list):
            held = f"{len(target)} entries (0..{len(target) - 1})" if target else "no entries"
            raise UsageError(
                f"{origin}: '{_dotted(path[:-1])}' holds {held}, so '{key}' does not exist; "
                f"set the whole list to add one: {_dotted(path[:-1])}=[...]"
            )
        else:
            raise UsageError(f"{origin}: '{_dotted(path[:-1])}' is not a section, so '{key}' does not exist")
        if isinstance(target, str):
            # `loss=cross_entropy` then `loss.label_smoothing=0.1`: a bare name becomes {name: ...}.
            _set(data, path, {"name": target})
            target = _get(data, path)
    last: str | int = int(parts[-1]) if isinstance(target, list) and parts[-1].isdigit() else parts[-1]
    if isinstance(target, list) and not isinstance(last, int):
        held = f"0..{len(target) - 1}" if target else "the list is empty"
        raise UsageError(f"{origin}: '{parts[-1]}' is not a list index; entries count from 0 ({held})")
    if isinstance(target, list) and not (isinstance(last, int) and last < len(target)):
        raise UsageError(f"{origin}: '{key}' is past the end of a list of {len(target)}")
    if not isinstance(target, (dict, list)):
        raise UsageError(f"{origin}: '{_dotted(path)}' is a value, not a section, so '{key}' does not exist")
    target[last] = value
    full = path + (last,)
    sources.drop_under(full)
    sources.set(full, origin)
    _record_children(value, full, origin, sources)


def _dotted_key(mapping: dict[str, Any], rest: list[str]) -> list[str]:
    """`rest` as [the mapping's key, what follows inside it]: the longest key it already has
    (`optimizer.lr` of `optimizer.lr.high`), else all of `rest` as a new key."""
    for end in range(len(rest), 0, -1):
        if ".".join(rest[:end]) in mapping:
            return [".".join(rest[:end]), *rest[end:]]
    return [".".join(rest)]


def _check_new_entry(key: str, mapping: str, origin: str, target: dict[str, Any]) -> None:
    """A new search-space key that ends in an entry's setting (`optimizer.momentum.high`) meant an entry
    the space does not have: say so, rather than fail on a malformed entry named with the setting."""
    entry, _, setting = key.rpartition(".")
    if entry and setting in ParamSpec.model_fields:
        existing = ", ".join(target) or "none"
        raise UsageError(
            f"{origin}: {mapping} has no entry '{entry}' (it has: {existing}); add it whole, e.g. "
            f"{mapping}.{entry}={{type: float, low: ..., high: ...}}"
        )


def _record_children(value: Any, at: KeyPath, origin: str, sources: SourceMap) -> None:
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        sources.set(at + (key,), origin)
        _record_children(child, at + (key,), origin, sources)


def _get(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: KeyPath, value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def as_override(key: str, value) -> str:
    """`key=value` for a command line, for any YAML value."""
    return f"{key}={json.dumps(value)}"  # JSON is YAML: strings, numbers, lists and mappings round-trip


# Keyword arguments of most optimizer entries, which the schema cannot list (they are the factory's).
_COMPONENT_KEYS = {"lr": "optimizer.lr", "weight_decay": "optimizer.weight_decay", "momentum": "optimizer.momentum"}


def override_for_option(option: str, value: str | None) -> str:
    """How to write a mistaken command-line option (`--epochs 3`) as an override (`train.epochs=3`)."""
    from pydantic import BaseModel

    name, _, inline = option.lstrip("-").partition("=")
    name = name.replace("-", "_")
    shown = inline or value or "VALUE"
    key = name if "." in name or name in ExperimentConfig.model_fields else _COMPONENT_KEYS.get(name)
    for section, field in ExperimentConfig.model_fields.items():
        types = [field.annotation, *getattr(field.annotation, "__args__", ())]  # Section | None too
        sections = [t for t in types if isinstance(t, type) and issubclass(t, BaseModel)]
        if key is None and any(name in t.model_fields for t in sections):
            key = f"{section}.{name}"
    if key is None:
        return "config keys are set as KEY=VALUE after the config (e.g. train.epochs=3); mlrun schema lists them"
    return f"config keys are set as KEY=VALUE after the config: write {key}={shown}"


def train_command(path, overrides: list[str]) -> str:
    """The `mlrun train` line that trains the run a command was pointed at: its config and overrides (the
    overrides choose the run's name and folder too), quoted for a shell."""
    import shlex

    return shlex.join(["mlrun", "train", str(path), *overrides])
