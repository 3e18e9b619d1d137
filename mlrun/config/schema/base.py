"""The two kinds of config section every other module builds on, and the walk over a config's components.

A `Section` is fixed: unknown keys are errors. A `ComponentSpec` is a registry `name` plus the factory's
keyword settings (`optimizer: {name: adamw, lr: 3e-4}`), checked against the factory's signature in
`mlrun.config.components` (which finds them with `component_fields`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What numpy's and torch's generators take: 0 to 2**32 - 1 (numpy refuses others with a traceback).
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class Section(BaseModel):
    """A fixed section: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ComponentSpec(BaseModel):
    """`name` plus the factory's keyword settings; a bare string is just the name."""

    model_config = ConfigDict(extra="allow", frozen=True, use_attribute_docstrings=True)
    registry_kind: ClassVar[str]

    name: str
    """Registry name (`mlrun list`), or 'package.module:function' for your own code."""

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def settings(self) -> dict[str, Any]:
        """The keyword settings passed to the factory (every key except the declared fields)."""
        return dict(self.model_extra or {})


def component_fields(config: BaseModel) -> list[tuple[tuple[str | int, ...], ComponentSpec]]:
    """Every component spec in a validated config with its key path, e.g. (('metrics', 0), spec)."""
    found: list[tuple[tuple[str | int, ...], ComponentSpec]] = []
    for key in type(config).model_fields:
        value = getattr(config, key)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, ComponentSpec):
                path = (key,) if index is None else (key, index)
                found.append((path, item))
                # Components inside a component's declared fields (data.augment's steps).
                found.extend(((*path, *inner), spec) for inner, spec in component_fields(item))
    return found
