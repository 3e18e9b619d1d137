"""Checks every component's settings against its registered factory's signature, at load time.

`optimizer: {name: adamw, lrr: 0.1}` fails here, before anything is built, with the file, the line,
the key and the closest allowed name.
"""

from __future__ import annotations

from pydantic import ValidationError

from mlrun.config.errors import SourceMap, dotted
from mlrun.config.schema import ComponentSpec, ExperimentConfig, component_fields
from mlrun.errors import UsageError, did_you_mean
from mlrun.registry import REGISTRIES


def check_components(config: ExperimentConfig, sources: SourceMap, sections: tuple[str, ...] | None = None) -> None:
    """Every component's name and settings, or only those under `sections` (top-level keys)."""
    for path, spec in component_fields(config):
        if sections is None or path[0] in sections:
            check_component(spec, path, sources)


def check_component(spec: ComponentSpec, path: tuple, sources: SourceMap) -> None:
    registry = REGISTRIES[spec.registry_kind]
    name_path = (*path, "name")
    try:
        registry.get(spec.name)
    except UsageError as exc:
        raise UsageError(f"{sources.where(name_path)}: {dotted(name_path)}: {exc}") from None
    try:
        registry.validate(spec.name, spec.settings)
    except ValidationError as exc:
        raise UsageError(_settings_message(exc, spec, path, sources)) from None


def _settings_message(exc: ValidationError, spec: ComponentSpec, path: tuple, sources: SourceMap) -> str:
    registry = REGISTRIES[spec.registry_kind]
    allowed = [*registry.settings_model(spec.name).model_fields, *type(spec).model_fields]
    lines = []
    for error in exc.errors():
        loc = (*path, *error["loc"])
        what = f"{registry.one} '{spec.name}'"
        if error["type"] == "extra_forbidden":
            key = str(error["loc"][-1])
            text = f"unknown setting of {what}.{did_you_mean(key, allowed)} Allowed: {', '.join(allowed)}."
            if ":" in spec.name and _takes_positional(registry.get(spec.name), key):
                text += (
                    f" Your factory takes '{key}' as a positional parameter; settings from YAML are keyword-only: "
                    f"runtime inputs before `/`, settings after `*`, e.g. def factory(meta, /, *, {key}=...)."
                )
        elif error["type"] == "missing":
            text = f"required setting of {what} is missing."
        else:
            text = f"{error['msg'].removeprefix('Value error, ')} (got {error.get('input')!r})."
        lines.append(f"{sources.blame(loc)}: {dotted(loc)}: {text}")
    return "\n".join(lines)


def _takes_positional(factory, key: str) -> bool:
    """Whether a user factory declares `key`, but not as keyword-only (where YAML settings go)."""
    import inspect

    try:
        param = inspect.signature(factory).parameters.get(key)
    except (TypeError, ValueError):  # a callable without a readable signature
        return False
    return param is not None and param.kind is not inspect.Parameter.KEYWORD_ONLY
