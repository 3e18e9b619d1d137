"""One self-contained HTML report: the comparison table and interactive overlaid curves.

plotly's JavaScript (about 4.6 MB) is inlined into the page, so it opens offline, from a cluster's
scratch disk or an e-mail attachment, with no request to a CDN.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mlrun.errors import UsageError
from mlrun.reporting.curves import panels
from mlrun.reporting.fronts import fronts_html
from mlrun.reporting.runs import RunRecord, curve

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f2f2f2; }} td:first-child, th:first-child {{ text-align: left; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{subtitle}</p>
<h2>Runs</h2>
{table}
<h2>Curves</h2>
{missing}
{figure}
{fronts}
</body></html>
"""


def table_html(rows: list[dict[str, Any]], format_cell) -> str:
    head = "".join(f"<th>{html.escape(str(key))}</th>" for key in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(key, value))}</td>" for key, value in row.items()) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(runs: list[RunRecord], metric: str) -> str:
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise UsageError("mlrun compare writes its HTML report with plotly: pip install 'mlrun[report]'") from None
    from plotly.colors import qualitative

    shown = panels(metric)
    figure = make_subplots(rows=1, cols=len(shown), subplot_titles=[title for _, title in shown])
    colours = qualitative.Plotly
    for index, run in enumerate(runs):
        for column, (key, _) in enumerate(shown, start=1):
            steps, values = curve(run, key)
            figure.add_trace(
                go.Scatter(
                    x=steps,
                    y=values,
                    name=run.name,
                    legendgroup=run.name,
                    showlegend=column == 1,  # one legend entry per run toggles all its panels
                    mode="lines+markers" if len(steps) < 12 else "lines",
                    line={"color": colours[index % len(colours)]},
                ),
                row=1,
                col=column,
            )
            figure.update_xaxes(title_text="optimizer step", row=1, col=column)
    figure.update_layout(height=460, template="plotly_white", legend={"orientation": "h", "y": -0.2})
    # include_plotlyjs=True inlines the library: the page needs no network.
    return figure.to_html(full_html=False, include_plotlyjs=True, config={"responsive": True})


def write_report(
    runs: list[RunRecord], rows: list[dict[str, Any]], metric: str, path: Path, format_cell, missing: list[str]
) -> Path:
    """The page; `missing` says which runs have no curve in a panel (curves.missing_curves)."""
    title = f"mlrun compare: {len(runs)} run{'s' if len(runs) != 1 else ''}"
    subtitle = html.escape(f"metric {metric}; runs: {', '.join(str(run.path) for run in runs)}")
    page = PAGE.format(
        title=html.escape(title),
        subtitle=subtitle,
        table=table_html(rows, format_cell),
        missing="".join(f"<p>{html.escape(line)}</p>" for line in missing),
        figure=figure_html(runs, metric),
        fronts=fronts_html(runs),
    )
    path.write_text(page, encoding="utf-8")
    return path
