"""Relative file paths of a config made absolute, so a run directory works from any working directory.

Data files, model and tokenizer folders, `init_from` and teacher runs are read relative to the
directory `mlrun train` started in. The run's config.yaml stores them resolved, so that

    cd /project && mlrun train configs/bert_text.yaml
    cd /tmp && mlrun eval /project/runs/bert_text

reads the same files. A value counts as a path when it names something that exists (data globs:
when they match a file); names of components (`name:` keys, bare list entries such as metrics) and
the run's own location (`output_dir`, `name`, `base`) are kept as written.
"""

from __future__ import annotations

import glob
import os
from typing import Any

_KEPT_SECTIONS = ("name", "output_dir", "base", "tracking", "metrics")
_GLOB_CHARS = set("*?[")


def resolve_local_paths(config: dict[str, Any], cwd: str | None = None) -> dict[str, Any]:
    """A copy of the config mapping (as model_dump(mode='json') gives it) with existing relative paths absolute."""
    cwd = cwd or os.getcwd()
    return {
        # A top-level string (loss: cross_entropy, objective: supervised) is a component's name.
        key: value if key in _KEPT_SECTIONS or isinstance(value, str) else _resolve(value, cwd, key == "data", False)
        for key, value in config.items()
    }


def _resolve(value: Any, cwd: str, globs: bool, in_list: bool) -> Any:
    if isinstance(value, dict):
        return {k: v if k == "name" else _resolve(v, cwd, globs, in_list=False) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(item, cwd, globs, in_list=True) for item in value]
    if isinstance(value, str) and not (in_list and not globs):  # bare list entries are component names
        return _absolute(value, cwd, globs)
    return value


def _absolute(text: str, cwd: str, globs: bool) -> str:
    if not text or os.path.isabs(text) or "://" in text or text.startswith("~"):
        return text
    candidate = os.path.join(cwd, text)
    # Only the data section holds file patterns; elsewhere `classifier.*` is a parameter pattern.
    found = glob.glob(candidate) if globs and _GLOB_CHARS & set(text) else os.path.exists(candidate)
    return os.path.normpath(candidate) if found else text


def with_local_paths_resolved(config):
    """The validated config with `resolve_local_paths` applied; the same object when nothing changed."""
    dumped = config.model_dump(mode="json")
    resolved = resolve_local_paths(dumped)
    return config if resolved == dumped else type(config).model_validate(resolved)
