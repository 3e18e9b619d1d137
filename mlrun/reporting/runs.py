"""Run directories read back for comparison: config, summary, metric history, and what differs.

    from mlrun.reporting.runs import expand_runs, load_run, differing_keys
    runs = [load_run(p) for p in expand_runs(["runs/*"])]

Only files are read (config.yaml, summary.json, metrics.jsonl): no torch, no model building, so a
comparison of a hundred tuning trials takes a moment.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlrun.errors import UsageError


@dataclass
class RunRecord:
    """One run directory as compare sees it."""

    path: Path
    name: str  # the shortest unambiguous label: the folder, with its parents when folders repeat
    config: dict[str, Any]  # flattened: {"optimizer.lr": 0.003, ...}
    summary: dict[str, Any]  # summary.json, {} while a run has none yet
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines in order


def expand_runs(patterns: list[str]) -> list[Path]:
    """Run directories named by paths or globs (`runs/*`, `runs/x/tune/trial-*`), in order, once each.

    The shell expands unquoted globs; quoted ones (and Windows shells) are expanded here. Folders a
    glob matches that are not runs (no config.yaml, e.g. runs/x/tune) are skipped; a path given by
    name that is not a run is an error.
    """
    found: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern))]
            runs = [m for m in matches if (m / "config.yaml").is_file()]
            if not runs:
                raise UsageError(f"'{pattern}' matches no run directory (a folder with config.yaml) in {Path.cwd()}")
        else:
            path = Path(pattern)
            if not (path / "config.yaml").is_file():
                what = "does not exist" if not path.exists() else "is not a run directory (no config.yaml)"
                raise UsageError(f"'{pattern}' {what}; pass run directories such as runs/<name> or a glob runs/*")
            runs = [path]
        found.extend(run for run in runs if run not in found)
    return found


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values (a list of layers is one setting)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def load_run(path: Path) -> RunRecord:
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path / 'config.yaml'}: not valid YAML ({exc})") from None
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if not summary and (path / "stage.json").is_file():
        return load_stage(path, flatten(config))
    return RunRecord(path, path.name, flatten(config), summary, read_history(path / "metrics.jsonl"))


def load_stage(path: Path, config: dict[str, Any]) -> RunRecord:
    """A compress stage folder: its metrics as deployed (stage.json), its fine-tuning's curves (train/)."""
    stage = json.loads((path / "stage.json").read_text())
    result = stage.get("result") or {}
    tuned = path / "train" if (path / "train").is_dir() else path / f"train-{stage.get('rounds_done', 1)}"
    tuned_summary = json.loads((tuned / "summary.json").read_text()) if (tuned / "summary.json").is_file() else {}
    summary = {
        **{k: tuned_summary[k] for k in ("steps", "wall_time_s", "samples_per_s") if k in tuned_summary},
        "status": f"stage {stage.get('status', 'running')}",
        "final": result.get("metrics") or {},
    }
    # The stage's own settings, as keys of its config: a prune stage's config.yaml is its run's (the weights
    # differ, not the config), and compare then read "differing keys: none".
    made_by = flatten({"stage": stage.get("spec") or {}})
    return RunRecord(path, path.name, {**config, **made_by}, summary, read_history(tuned / "metrics.jsonl"))


def read_history(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl lines; a line cut short by a crash (the last one) is skipped, not fatal."""
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def label_runs(runs: list[RunRecord]) -> None:
    """Folder names, widened to parent/name where two runs share a folder name (trial-0001 of two studies)."""
    depth = 1
    while depth < 6:
        names = ["/".join(run.path.resolve().parts[-depth:]) for run in runs]
        if len(set(names)) == len(names):
            break
        depth += 1
    for run, name in zip(runs, names):
        run.name = name


# Keys that differ between any two runs without being a choice: where a run writes, what it is called,
# and `tune.*`, how a run would be searched rather than how it trained (a study's trials drop it).
IGNORED_KEYS = ("name", "output_dir")
IGNORED_SECTIONS = ("tune",)


def differing_keys(runs: list[RunRecord]) -> list[str]:
    """Config keys whose values are not the same in every run. A key a run lacks is null there, as
    `init_from: null` in one run and `init_from: {run: ...}` in another are: only init_from.run differs."""
    keys = sorted({key for run in runs for key in run.config})
    return [
        key
        for key in keys
        if key not in IGNORED_KEYS
        and key.split(".")[0] not in IGNORED_SECTIONS
        and len({json.dumps(run.config.get(key), default=str) for run in runs}) > 1
    ]


def curve(run: RunRecord, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged figure, skipping lines without it and non-finite values."""
    steps, values = [], []
    for line in run.history:
        value = line.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(int(line["step"]))
            values.append(float(value))
    return steps, values
