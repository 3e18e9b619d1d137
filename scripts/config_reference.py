"""Print the config reference (markdown) from the schema's field docstrings.

    python scripts/config_reference.py            # print
    python scripts/config_reference.py --write    # replace the block in README.md

A test checks README.md is up to date with the schema.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlrun.config.errors import model_in  # noqa: E402
from mlrun.config.schema import ComponentSpec, ExperimentConfig  # noqa: E402

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.name if isinstance(v, ComponentSpec) else v for v in value]
    return f"`{value}`" if value not in (None, []) else f"`{value}`".replace("None", "null")


def _cell(text: str | None) -> str:
    """A docstring as one table cell: one line, with `|` escaped so it does not split the row."""
    return " ".join((text or "").split()).replace("|", "\\|")


def reference() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in ExperimentConfig.model_fields.items():
        lines.append(f"| `{name}` | {_default(field)} | {_cell(field.description)} |")
        model = model_in(field.annotation)
        if model is not None and model is not ComponentSpec and len(model.model_fields) > 1:
            nested.append((name, model))
    for prefix, model in nested:
        for name, field in model.model_fields.items():
            if name == "name" and issubclass(model, ComponentSpec):
                continue
            lines.append(f"| `{prefix}.{name}` | {_default(field)} | {_cell(field.description)} |")
            inner = model_in(field.annotation)
            if inner is not None and not issubclass(inner, ComponentSpec):
                keyed = typing.get_origin(field.annotation) is dict  # tune.space.<key>.type
                at = f"{prefix}.{name}.<key>" if keyed else f"{prefix}.{name}"
                for sub, subfield in inner.model_fields.items():
                    lines.append(f"| `{at}.{sub}` | {_default(subfield)} | {_cell(subfield.description)} |")
    return "\n".join(lines)


def main() -> None:
    text = reference()
    if "--write" not in sys.argv:
        print(text)
        return
    readme = REPO / "README.md"
    content = readme.read_text()
    start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
    readme.write_text(content[:start] + "\n" + text + "\n" + content[end:])


if __name__ == "__main__":
    main()
