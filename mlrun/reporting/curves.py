"""Overlaid curves of several runs as one PNG: training loss, the chosen metric, learning rate.

matplotlib draws into a file (Agg backend: clusters have no display).
"""

from __future__ import annotations

from pathlib import Path

from mlrun.errors import UsageError
from mlrun.reporting.runs import RunRecord, curve


def panels(metric: str) -> list[tuple[str, str]]:
    """(logged key, title) of each panel, in order; the metric panel is skipped when it is the loss."""
    chosen = [("train/loss", "training loss")]
    if metric != "train/loss":
        chosen.append((metric, metric))
    chosen.append(("train/lr", "learning rate"))
    return chosen


def missing_curves(runs: list[RunRecord], metric: str) -> list[str]:
    """One line for each run that has no point to draw in a panel (failed before its first log, all NaN,
    not evaluated yet): the figure would leave it out without a word (a user trial: 5 runs, 3 in the legend)."""
    lines = []
    for run in runs:
        missing = [key for key, _ in panels(metric) if not curve(run, key)[0]]
        if len(missing) == len(panels(metric)):
            lines.append(f"{run.name} has no logged point to draw (metrics.jsonl): it is in the table, with no curve")
        elif missing:
            lines.append(f"{run.name} has no logged {' or '.join(missing)} to draw: no curve of it there")
    return lines


def write_png(runs: list[RunRecord], metric: str, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("mlrun compare draws its PNG with matplotlib: pip install 'mlrun[tune]'") from None
    shown = panels(metric)
    figure, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
    legend = {}  # run name -> its line: from every panel, as a run without a loss may still have a metric
    for axis, (key, title) in zip(axes[0], shown):
        for index, run in enumerate(runs):
            steps, values = curve(run, key)
            if steps:
                # a run keeps its colour in every panel, also where a run before it has no line
                style = {"color": f"C{index % 10}", "linewidth": 1.4, "marker": "o" if len(steps) < 12 else None}
                legend.setdefault(run.name, axis.plot(steps, values, label=run.name, **style)[0])
        axis.set_title(title)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        if key == "train/lr":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    labels = [run.name for run in runs if run.name in legend]
    handles = [legend[name] for name in labels]
    if handles:  # one legend for all panels, below them: panels stay the same width for any run count
        figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize="small")
    figure.tight_layout(rect=(0, 0.06 * min(1 + len(labels) // 4, 4), 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
