"""`mlrun schema`: JSON Schema (draft 2020-12) of the config, component settings included.

Each component section becomes `anyOf` a bare registry name or an object whose `name` is one
registered name and whose other keys are that factory's settings, so editors complete and check both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlrun.config.schema import ComponentSpec, ExperimentConfig
from mlrun.config.schema.duration import as_written
from mlrun.errors import UsageError
from mlrun.registry import REGISTRIES

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def config_schema() -> dict[str, Any]:
    schema = ExperimentConfig.model_json_schema()
    schema["$schema"] = DRAFT
    for spec_type in _spec_types():
        name = spec_type.__name__
        if name in schema.get("$defs", {}):
            schema["$defs"][name] = _component_schema(spec_type, schema["$defs"][name], schema["$defs"])
    return _completed_by_base(_durations_as_written(schema))


def _durations_as_written(node: Any) -> Any:
    """Defaults of durations as configs write them ('1ep'), not as pydantic encodes the tuple ([1, "ep"])."""
    if isinstance(node, list):
        return [_durations_as_written(item) for item in node]
    if not isinstance(node, dict):
        return node
    copy = {key: _durations_as_written(value) for key, value in node.items()}
    if "default" in node:
        copy["default"] = as_written(node["default"])
    return copy


def _completed_by_base(schema: dict[str, Any]) -> dict[str, Any]:
    """A file with `base:` is completed by its base chain, so it may leave out any required key at any
    depth (`model: {hidden_sizes: [64]}` without the base's `name`); unknown keys are still refused.

    The top level checks every file against a copy of the schema that requires nothing (editors complete
    from it); a file without `base:` must also satisfy the whole schema."""
    defs = schema.pop("$defs", {})
    partial = {key: value for key, value in _requiring_nothing(schema).items() if key != "$schema"}
    whole = {key: value for key, value in schema.items() if key not in ("$schema", "title", "description")}
    return {
        "$schema": DRAFT,
        **partial,
        "if": {"not": {"required": ["base"]}},
        "then": whole,
        "$defs": {**defs, **{f"{name}{PARTIAL}": _requiring_nothing(value) for name, value in defs.items()}},
    }


PARTIAL = "-partial"


def _requiring_nothing(node: Any) -> Any:
    """A copy without `required` (and with references to such copies), except in open objects (a user's
    own factory), where the required `name` is what identifies the variant."""
    if isinstance(node, list):
        return [_requiring_nothing(item) for item in node]
    if not isinstance(node, dict):
        return node
    copy = {key: _requiring_nothing(value) for key, value in node.items()}
    if copy.get("additionalProperties") is not True:
        copy.pop("required", None)
    if isinstance(ref := copy.get("$ref"), str) and ref.startswith("#/$defs/"):
        copy["$ref"] = ref + PARTIAL
    return copy


def _spec_types() -> list[type[ComponentSpec]]:
    return [t for t in ComponentSpec.__subclasses__() if hasattr(t, "registry_kind")]


def _component_schema(
    spec_type: type[ComponentSpec], generic: dict[str, Any], root_defs: dict[str, Any]
) -> dict[str, Any]:
    registry = REGISTRIES[spec_type.registry_kind]
    common = {k: v for k, v in generic.get("properties", {}).items() if k != "name"}
    variants: list[dict[str, Any]] = [{"type": "string", "enum": registry.names()}]
    for name in registry.names():
        settings = registry.settings_model(name).model_json_schema()
        properties = {"name": {"const": name}, **common, **settings.get("properties", {})}
        variant = {
            "type": "object",
            "properties": properties,
            "required": ["name", *settings.get("required", [])],
            "additionalProperties": False,
            "description": registry.summary(name),
        }
        root_defs.update(settings.get("$defs", {}))  # refs point at the root's $defs
        variants.append(variant)
    # Your own code ("package.module:function"): its settings are checked against its signature when
    # the config loads, which a static schema cannot know.
    user_code = {"type": "string", "pattern": USER_CODE}
    variants.append(user_code)
    variants.append(
        {
            "type": "object",
            "properties": {"name": user_code, **common},
            "required": ["name"],
            "additionalProperties": True,
            "description": "your own factory, 'package.module:function'",
        }
    )
    return {"description": generic.get("description", ""), "anyOf": variants}


USER_CODE = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"


def run_schema(out: Path | None) -> None:
    text = json.dumps(config_schema(), indent=2, default=str)
    if out is None:
        print(text)
    else:
        from mlrun.commands.usage import check_not_overwriting, write_named_file

        check_not_overwriting(out, "--out")
        if out.is_file() and not _a_schema(out):
            raise UsageError(f"--out: '{out}' exists and is not a JSON Schema; give a new file name or remove it")
        write_named_file(out, text + "\n", "--out")
        print(f"mlrun: wrote {out}")


def _a_schema(path: Path) -> bool:
    """Whether `path` holds a JSON Schema (one written before, which --out may replace)."""
    try:
        return "$schema" in json.loads(path.read_text())
    except (ValueError, OSError, TypeError):
        return False
