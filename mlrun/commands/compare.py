"""`mlrun compare RUN_DIR... [--metric M] [--out DIR] [--json]`.

Reads each run's config.yaml, summary.json and metrics.jsonl (no torch, no model building) and
prints one table: the config keys that differ between the runs, the chosen metric's best and final
values, steps, wall time, throughput and peak memory. Writes DIR/curves.png (training loss, the
metric, learning rate overlaid) and DIR/report.html (the same, interactive, with plotly's
JavaScript inlined: it opens offline). Globs work quoted or not: `mlrun compare 'runs/x/tune/trial-*'`.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

from mlrun.errors import UsageError
from mlrun.jsonout import print_json


def run_compare(patterns: list[str], metric: str | None, out: Path, json_output: bool) -> None:
    from mlrun.reporting.curves import missing_curves, write_png
    from mlrun.reporting.fronts import read_fronts
    from mlrun.reporting.html import write_report
    from mlrun.reporting.results import choose_metric, lower_is_better, result_row
    from mlrun.reporting.runs import differing_keys, label_runs, load_runs

    if not patterns:
        raise UsageError("mlrun compare: name at least one run directory, e.g. mlrun compare runs/*")
    runs, left_out = load_runs(patterns)
    notes = [*left_out, *(note for run in runs for note in run.notes)]  # on stderr, and in --json
    for note in notes:
        print(f"mlrun: compare: {note}", file=sys.stderr)
    if len(runs) == 1:
        print(
            f"mlrun: compare: only one run ({runs[0].path}), nothing to compare it with: its figures follow. "
            "Name more runs, e.g. mlrun compare 'runs/*'",
            file=sys.stderr,
        )
    label_runs(runs)
    chosen = choose_metric(runs, metric)
    minimise = lower_is_better(runs, chosen)
    keys = differing_keys(runs)
    cell = partial(format_cell, frozenset(keys))
    rows = []
    for run in runs:
        figures = result_row(run, chosen, minimise)
        rows.append({"run": figures.pop("run"), **{key: run.config.get(key) for key in keys}, **figures})
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: '{out}' is a file; give a folder for curves.png and report.html")
    out.mkdir(parents=True, exist_ok=True)
    shown = [{k: v for k, v in row.items() if k != "path"} for row in rows]
    missing = missing_curves(runs, chosen)
    for note in missing:
        print(f"mlrun: compare: {note}", file=sys.stderr)
    png = write_png(runs, chosen, out / "curves.png")
    page = write_report(runs, shown, chosen, out / "report.html", cell, missing)
    fronts = {run.name: front for run, front in read_fronts(runs)}  # compress searches' Pareto fronts
    for name, front in fronts.items():
        print(
            f"mlrun: compare: {name}'s compress search has a Pareto front of {len(front['front'])} member(s): "
            f"in {page}",
            file=sys.stderr,
        )
    if json_output:
        report = {
            "metric": chosen,
            "lower_is_better": minimise,
            "differing_keys": keys,
            "runs": rows,
            "fronts": fronts,
            "files": {"png": str(png), "html": str(page)},
            "notes": [*notes, *missing],
        }
        print_json(report)
        return
    direction, counted = "lower" if minimise else "higher", f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    print(f"mlrun: {counted}, metric {chosen} ({direction} is better); differing keys: {', '.join(keys) or 'none'}")
    print(text_table(shown, cell))
    print(f"mlrun: wrote {png} and {page}")


def format_cell(config_keys: frozenset, key: str, value: Any) -> str:
    """Config values as written in the config (lr 0.003, a sampled lr 0.08311); results in mlrun's one number
    format. Both keep four significant digits (--json keeps every digit)."""
    from mlrun.tracking.figures import format_figure, format_setting

    if value is None:
        return "-"
    if isinstance(value, (list, dict)):
        return shorten(json.dumps(value))  # model_edits of a compress stage run to kilobytes
    return shorten(format_setting(value)) if key in config_keys else format_figure(value)


def shorten(text: str, limit: int = 60) -> str:
    """A table cell of at most `limit` characters; the full value is in --json."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_table(rows: list[dict[str, Any]], cell) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    header = list(rows[0])
    cells = [[cell(key, row[key]) for key in header] for row in rows]
    widths = [max(len(key), *(len(line[i]) for line in cells)) for i, key in enumerate(header)]
    numeric = [all(isinstance(row[key], (int, float)) or row[key] is None for row in rows) for key in header]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(header), *(line(values) for values in cells)])
