"""Run directories read back for comparison: config, summary, metric history, and what differs.

    from mlrun.reporting.runs import differing_keys, load_runs
    runs, left_out = load_runs(["runs/*"])

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
    notes: list[str] = field(default_factory=list)  # what could not be read (a damaged summary.json), one line each


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


def not_a_run(path: Path) -> str | None:
    """Why a folder with config.yaml is not a run to compare, in one line; None when it is one.

    An export folder carries its run's config.yaml; a hand-written config.yaml has no manifest.json (train
    writes one at every start) and holds the settings as typed, not resolved: diffed against resolved runs,
    every default read as a difference (a user trial: about 50 false keys).
    """
    if (path / "export.json").is_file():
        return f"{path} is an export folder, not a run (mlrun predict takes it): left out"
    if not any((path / record).is_file() for record in ("manifest.json", "summary.json", "stage.json")):
        return f"{path} was never trained (no manifest.json or summary.json: mlrun train did not make it): left out"
    return None


def load_runs(patterns: list[str]) -> tuple[list[RunRecord], list[str]]:
    """(the runs the patterns name, one line for each folder left out); exit 2 when no run remains."""
    runs, left_out = [], []
    for path in expand_runs(patterns):
        reason = not_a_run(path)
        if reason is None:
            runs.append(load_run(path))
        else:
            left_out.append(reason)
    if not runs:
        more = f"; and {len(left_out) - 3} more" if len(left_out) > 3 else ""
        raise UsageError(
            f"nothing to compare: {'; '.join(left_out[:3])}{more}. Pass run folders mlrun train made, e.g. runs/<name>"
        )
    return runs, left_out


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
    notes: list[str] = []
    summary = read_record(path / "summary.json", notes)
    if not summary and (path / "stage.json").is_file() and not notes:
        return load_stage(path, flatten(config))
    if notes:  # the run is still shown: its config and metrics.jsonl say most of what compare shows
        summary = {"status": "unknown"}
    return RunRecord(path, path.name, flatten(config), summary, read_history(path / "metrics.jsonl"), notes)


def read_record(path: Path, notes: list[str]) -> dict[str, Any]:
    """A JSON record (summary.json, stage.json), {} when absent. One cut short or emptied (a process killed
    while writing it) is {} with a line in `notes`: one damaged run does not stop the comparison of the rest."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        why = f"{exc}; cut short while written?"
        notes.append(f"{path} is not valid JSON ({why}): status unknown, figures from metrics.jsonl")
        return {}
    return record if isinstance(record, dict) else {}


def load_stage(path: Path, config: dict[str, Any]) -> RunRecord:
    """A compress stage folder: its metrics as deployed (stage.json), its fine-tuning's curves (train/)."""
    notes: list[str] = []
    stage = read_record(path / "stage.json", notes)
    result = stage.get("result") or {}
    tuned = path / "train" if (path / "train").is_dir() else path / f"train-{stage.get('rounds_done', 1)}"
    tuned_summary = read_record(tuned / "summary.json", notes)
    summary = {
        **{k: tuned_summary[k] for k in ("steps", "wall_time_s", "samples_per_s") if k in tuned_summary},
        "status": f"stage {stage.get('status', 'unknown' if not stage and notes else 'running')}",
        "final": result.get("metrics") or {},
    }
    # The stage's own settings, as keys of its config: a prune stage's config.yaml is its run's (the weights
    # differ, not the config), and compare then read "differing keys: none".
    made_by = flatten({"stage": stage.get("spec") or {}})
    return RunRecord(path, path.name, {**config, **made_by}, summary, read_history(tuned / "metrics.jsonl"), notes)


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
# and what happens around its training rather than in it: `tune.*` (how it would be searched; a study's
# trials drop it), `compress` (what `mlrun compress` would do with its weights) and `tracking` (where its
# figures also went).
IGNORED_KEYS = ("name", "output_dir")
IGNORED_SECTIONS = ("tune", "compress", "tracking")


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
