"""Project-wide rules: shipped configs build, imports point down the diagram (DESIGN §4)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mlrun.config.load import load_config
from mlrun.engine.build import build_components
from tests.conftest import REPO, make_tiny_hf

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


# Shipped configs whose "pretrained" source a user makes first (their header says how): the test
# makes it in a temporary folder and points the config there.
PRETRAINED_SOURCES = {  # (kind, corpus) of scripts/make_tiny_hf.py
    "bert_text.yaml": ("bert", None),
    "gpt2_lm.yaml": ("gpt2", REPO / "configs/data/public_domain.txt"),
}


def pretrained_overrides(config: Path, folder: Path) -> list[str]:
    if config.name not in PRETRAINED_SOURCES:
        return []
    make_tiny_hf(folder, *PRETRAINED_SOURCES[config.name])
    return [f"model.path={folder}", f"data.tokenizer={folder}"]


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(config, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # configs name their data files relative to the repository
    overrides = pretrained_overrides(config, tmp_path / "pretrained")
    # init_from sources are made by a command in the config's header (tests/test_transfer.py runs them).
    parts = build_components(load_config(config, overrides), init_weights=False)
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


# Every import edge allowed between mlrun's packages (top-level modules count as packages). A new
# edge is a design decision: add it here on purpose, never to make a test pass.
ALLOWED_IMPORTS = {
    "__main__": {"cli"},
    "cli": {"commands", "errors", "jsonout", "notices", "ranks"},
    "jsonout": {"ranks"},  # under torchrun the first process prints the document
    "commands": {
        "compression",
        "config",
        "data",  # prepare writes a dataset's samples as shards
        "energy",
        "engine",
        "errors",
        "export",
        "jsonout",
        "models",  # eval reports a model's early exits (models/exit_eval.py)
        "optim",  # validate --print shows the parameter groups
        "prediction",
        "profiling",
        "ranks",
        "registry",
        "reporting",
        "techniques",  # export merges LoRA adapters
        "tracking",
        "tuning",
    },
    "config": {"errors", "figures", "registry"},
    "registry": {"errors"},
    "data": {"errors", "registry"},
    # config: models.saved rebuilds a run's model; notices: torchao's noise when transformers imports it
    "models": {"config", "data", "errors", "notices", "registry"},
    "losses": {"data", "registry"},
    "metrics": {"data", "registry"},
    # callbacks: an objective that trains parameters of its own (distill's projections) checkpoints as one.
    "objectives": {"callbacks", "data", "errors", "models", "registry"},
    # config: the param_groups rules' type; models: parameter globs, blocks and head (models.addressing).
    "optim": {"config", "errors", "models", "notices", "registry"},  # notices: torchao's import noise
    "techniques": {"callbacks", "config", "errors", "models", "notices", "registry"},  # models: early-exit heads, parts
    "tracking": {"energy", "errors", "registry"},
    "energy": {"config"},
    "memory": {"optim", "registry"},
    "engine": {
        "callbacks",
        "config",
        "data",
        "energy",
        "errors",
        "memory",
        "metrics",
        "models",
        "objectives",
        "optim",
        "ranks",
        "registry",
        "tracking",
    },
    "export": {"config", "data", "errors", "metrics", "models", "registry"},
    # child_process: profile --matrix runs each case, tune --workers each worker, as `python -m mlrun`;
    # tracking: the study's MLflow run; compression: a compress search (tune.objectives) runs the chain per trial.
    # notices: the profiler's native notices on file descriptor 2.
    "profiling": {"child_process", "config", "data", "energy", "engine", "errors", "memory", "notices"},
    "tuning": {"callbacks", "child_process", "compression", "config", "engine", "errors", "figures", "tracking"},
    "reporting": {"errors", "figures"},
    "prediction": {"config", "data", "engine", "errors", "export", "models"},
    # engine: fine-tuning runs the training loop; techniques: masks and tied weights of the stages.
    "compression": {"config", "data", "engine", "errors", "export", "models", "registry", "techniques"},
}


def package_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module in imports_of(path):
            parts = module.split(".")
            if parts[0] == "mlrun" and len(parts) > 1 and parts[1] != source:
                edges.setdefault(source, set()).add(parts[1])
    return edges


def test_imports_between_packages_follow_the_allowed_edges():
    unexpected = {
        source: sorted(targets - ALLOWED_IMPORTS.get(source, set()))
        for source, targets in package_edges().items()
        if targets - ALLOWED_IMPORTS.get(source, set())
    }
    assert not unexpected, f"imports outside ALLOWED_IMPORTS: {unexpected}"


def module_edges() -> dict[str, set[str]]:
    """mlrun module -> the mlrun modules it imports (at the top or inside functions)."""
    modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")
    }
    edges = {}
    for name, path in modules.items():
        targets = set()
        for module in imports_of(path):
            while module and module not in modules:  # `from mlrun.a.b import c` names module mlrun.a.b
                module = module.rpartition(".")[0]
            if module and module != name:
                targets.add(module)
        edges[name] = targets
    return edges


def test_no_import_cycles_between_modules():
    edges = module_edges()

    def on_cycle(start: str) -> bool:
        stack, seen = list(edges[start]), set()
        while stack:
            module = stack.pop()
            if module == start:
                return True
            if module not in seen:
                seen.add(module)
                stack.extend(edges.get(module, ()))
        return False

    cycles = sorted(module for module in edges if on_cycle(module))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_training_loop_reads_on_one_screen():
    """The loop stays small: bookkeeping belongs in its own objects (log window, batches, weights)."""
    source = (REPO / "mlrun" / "engine" / "loop.py").read_text()
    loop = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "TrainingLoop")
    methods = [n.name for n in loop.body if isinstance(n, ast.FunctionDef)]
    attributes = {
        target.attr
        for node in ast.walk(loop)
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for assigned in (node.targets if isinstance(node, ast.Assign) else [node.target])
        for target in (assigned.elts if isinstance(assigned, ast.Tuple) else [assigned])
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
    }
    assert len(source.splitlines()) <= 200
    assert len(methods) <= 12, methods
    assert len(attributes) <= 12, sorted(attributes)


def test_readme_names_every_kind_mlrun_list_prints():
    """README's command table listed 8 kinds; `mlrun list` prints 11 (a user trial)."""
    from mlrun.registry import REGISTRIES

    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `mlrun list"))
    assert not [kind for kind in REGISTRIES if kind not in row], row


def test_readme_says_where_find_exits_is_imported_from():
    from mlrun.models.exits import find_exits  # noqa: F401  the line README gives

    assert "from mlrun.models.exits import find_exits" in " ".join((REPO / "README.md").read_text().split())
