"""Where config keys came from, and validation errors written for people.

A pydantic error becomes `file:line: dotted.key: what is wrong. Did you mean ...?`.
"""

from __future__ import annotations

import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from mlrun.errors import did_you_mean

KeyPath = tuple[str | int, ...]


class SourceMap:
    """Key path -> 'file:line' (or "override 'k=v'") for every key of a config."""

    def __init__(self) -> None:
        self._where: dict[KeyPath, str] = {}

    def set(self, path: KeyPath, where: str) -> None:
        self._where[path] = where

    def update(self, other: SourceMap | dict[KeyPath, str]) -> None:
        self._where.update(other._where if isinstance(other, SourceMap) else other)

    def under(self, path: KeyPath) -> dict[KeyPath, str]:
        return {k: v for k, v in self._where.items() if k[: len(path)] == path}

    def drop_under(self, path: KeyPath) -> None:
        for key in list(self.under(path)):
            del self._where[key]

    def where(self, path: KeyPath) -> str:
        """Where the key (or its nearest enclosing key) was written; the file for missing keys."""
        for end in range(len(path), 0, -1):
            if path[:end] in self._where:
                return self._where[path[:end]]
        files = {w.rsplit(":", 1)[0] for w in self._where.values() if not w.startswith("override")}
        return sorted(files)[0] if len(files) == 1 else "config"

    def blame(self, path: KeyPath) -> str:
        """Where to look for an error at `path`: where() and, for a section written in a file, the overrides
        that changed keys inside it (a section's own check fails on what they set)."""
        place = self.where(path)
        if not path or place.startswith("override"):
            return place
        inside = [where for key, where in self.under(path).items() if key != path and where.startswith("override")]
        return f"{place} with {', '.join(dict.fromkeys(inside))}" if inside else place


def dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)


def validation_error_message(exc: ValidationError, sources: SourceMap, model: type[BaseModel], prefix: KeyPath = ()):
    """One line per problem, the first one first."""
    lines = []
    # Unknown keys first: a misspelt key also makes the real key look missing.
    for error in sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden"):
        loc = prefix + tuple(error["loc"])
        lines.append(f"{sources.blame(loc)}: {dotted(loc)}: {_explain(error, model, loc[len(prefix) :])}")
    return "\n".join(lines)


def _explain(error: dict[str, Any], model: type[BaseModel], loc: KeyPath) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = allowed_keys(model, loc[:-1])
        return f"unknown key.{did_you_mean(str(loc[-1]), allowed)} Allowed here: {', '.join(allowed)}."
    if kind == "missing":
        return "required key is missing."
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind in ("model_type", "dict_type"):  # pydantic: "a valid dictionary or instance of SchedulerSpec"
        return section_expected(model, loc, value) or message + "."
    if not isinstance(value, (dict, list)):
        message += f" (got {value!r})"
    if kind == "literal_error" and isinstance(value, str):  # a misspelt choice: name the closest one
        return message + "." + did_you_mean(value, re.findall(r"'([^']*)'", error.get("ctx", {}).get("expected", "")))
    if kind == "string_type" and isinstance(value, (int, float, bool)):  # YAML read `name: 123` as a number
        read_as = "true/false" if isinstance(value, bool) else "a number"
        return message + f". YAML reads it as {read_as}: quote it ('{value}')."
    return message + "."


def section_expected(model: type[BaseModel], loc: KeyPath, value: Any) -> str | None:
    """What the section at `loc` takes, in a config's words, and how to get its default (None: not a section)."""
    from mlrun.registry import REGISTRIES

    field = field_at(model, loc)
    section = model_in(field.annotation) if field is not None else None
    if section is None:
        return None
    got = "null" if value is None else repr(value)
    kind = getattr(section, "registry_kind", None)  # a component: name plus the factory's settings
    if kind is None:
        return f"takes a mapping of its settings (mlrun schema lists them), not {got}."
    registry = REGISTRIES[kind]
    article = "an" if registry.one[0] in "aeiou" else "a"
    text = f"takes {article} {registry.one} name or {{name: ..., settings}} (mlrun list {registry.kind}), not {got}"
    default = None if field.is_required() else field.get_default()
    if getattr(default, "name", None):
        summary = registry.summary(default.name).rstrip(".")
        what = f": {summary[:1].lower()}{summary[1:]}" if summary else ""
        text += f"; leave it out for the default, {{name: {default.name}}}{what}"
    return text + "."


def field_at(model: type[BaseModel], loc: KeyPath) -> Any:
    """The pydantic field at `loc` inside `model` (None at the top or where `loc` leaves the schema)."""
    return _walk(model, loc)[0]


def allowed_keys(model: type[BaseModel], loc: KeyPath) -> list[str]:
    """The field names of the section at `loc` inside `model`."""
    current = _walk(model, loc)[1]
    return list(current.model_fields) if _is_model(current) else []


def _walk(model: type[BaseModel], loc: KeyPath) -> tuple[Any, Any]:
    """(the field at `loc`, the section model it holds), following `loc` down from `model`."""
    current: Any = model
    field = None
    keyed = False  # the previous part was a mapping of sections (tune.space): this part is one of its keys
    for part in loc:
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        field = current.model_fields.get(part) if _is_model(current) else None
        if field is None:
            return None, None
        current, keyed = model_in(field.annotation), _is_mapping(field.annotation)
    return field, current


def _is_mapping(annotation: Any) -> bool:
    """`dict[str, X]` or `dict[str, X] | None`."""
    return typing.get_origin(annotation) is dict or any(_is_mapping(a) for a in typing.get_args(annotation))


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def model_in(annotation: Any) -> Any:
    """The BaseModel inside `X | None`, `list[X]` or `X`."""
    if _is_model(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None
