"""The Pareto fronts of compress searches (`mlrun tune` with tune.objectives) in `mlrun compare`'s HTML.

A compared run whose tune/compress/pareto.json exists gets a section: the front as a table (trial,
each objective, settings, the folder `mlrun export` takes) and an interactive scatter of the first
objective against each other one. Read from the JSON alone: no torch, no Optuna.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from mlrun.reporting.runs import RunRecord


def read_fronts(runs: list[RunRecord]) -> list[tuple[RunRecord, dict]]:
    fronts = []
    for run in runs:
        path = Path(run.path) / "tune" / "compress" / "pareto.json"
        if path.is_file():
            fronts.append((run, json.loads(path.read_text())))
    return fronts


def fronts_html(runs: list[RunRecord]) -> str:
    """One section a run with a compress search; empty when no compared run has one."""
    sections = [front_section(run, front) for run, front in read_fronts(runs)]
    return "".join(sections)


def front_section(run: RunRecord, front: dict) -> str:
    objectives = list(front["objectives"])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", *objectives, "settings", "export"])
    rows = []
    for member in front["front"]:
        settings = " ".join(f"{k.removeprefix('compress.')}={v}" for k, v in member["params"].items())
        cells = [f"trial {member['number']}", *(f"{member['values'][k]:.6g}" for k in objectives), settings]
        cells.append(f"mlrun export {member['dir']}")
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    title = html.escape(f"Pareto front of {run.name}'s compress search ({', '.join(objectives)})")
    return f"<h2>{title}</h2>\n{table}\n{scatter_html(front, objectives)}"


def scatter_html(front: dict, objectives: list[str]) -> str:
    if len(objectives) < 2:
        return ""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    others = objectives[1:]
    figure = make_subplots(rows=1, cols=len(others))
    members = front["front"]
    for column, other in enumerate(others, start=1):
        figure.add_trace(
            go.Scatter(
                x=[m["values"][other] for m in members],
                y=[m["values"][objectives[0]] for m in members],
                text=[f"trial {m['number']}" for m in members],
                mode="markers+text",
                textposition="top center",
                showlegend=False,
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text=other, row=1, col=column)
        figure.update_yaxes(title_text=objectives[0], row=1, col=column)
    figure.update_layout(height=420, template="plotly_white")
    # The curves' figure above already inlined plotly's JavaScript.
    return figure.to_html(full_html=False, include_plotlyjs=False)
