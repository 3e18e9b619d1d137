"""Project-wide rules: shipped configs build, imports point down the diagram (DESIGN §4)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mlrun.config.load import load_config
from mlrun.engine.build import build_components
from tests.conftest import REPO

PACKAGE = REPO / "mlrun"
COMPONENTS = ["models", "data", "optim", "techniques", "tracking", "metrics.py", "losses.py", "callbacks.py"]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def modules_under(name: str) -> list[Path]:
    target = PACKAGE / name
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(config, monkeypatch):
    monkeypatch.chdir(REPO)  # configs name their data files relative to the repository
    # init_from sources are made by a command in the config's header (tests/test_transfer.py runs them).
    parts = build_components(load_config(config), init_weights=False)
    assert parts.plan.total_steps > 0 and sum(p.numel() for p in parts.model.parameters()) > 0


def test_nothing_imports_the_cli():
    for path in PACKAGE.rglob("*.py"):
        assert "mlrun.cli" not in imports_of(path) or path.name == "__main__.py", path


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_never_import_engine_or_commands(component):
    for path in modules_under(component):
        bad = {m for m in imports_of(path) if m.startswith(("mlrun.engine", "mlrun.commands"))}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_config_layer_does_not_import_engine():
    for path in modules_under("config"):
        assert not {m for m in imports_of(path) if m.startswith(("mlrun.engine", "mlrun.commands"))}, path


def test_engine_does_not_import_commands():
    for path in modules_under("engine"):
        assert not {m for m in imports_of(path) if m.startswith("mlrun.commands")}, path


def test_readme_config_reference_is_up_to_date():
    import subprocess
    import sys

    generated = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "config_reference.py")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert generated in (REPO / "README.md").read_text(), "run: python scripts/config_reference.py --write"
