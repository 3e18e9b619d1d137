"""What a compress search leaves in runs/<name>/tune/compress/: the Pareto front (pareto.json), every
trial (trials.csv), summary.json and pareto.png, and the table `mlrun tune` prints.

The front is Optuna's `study.best_trials`: the completed trials no other completed trial beats or ties
on every objective while beating on one. Each member names its last stage folder, which
`mlrun export` takes as it is.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from mlrun.tuning.report import first_failure
from mlrun.tuning.space import decode

# How a figure is shown in the table: bytes as MB, milliseconds and metrics as they are.
_UNITS = {"file_bytes": 1e6, "bytes": 1e6, "huffman_bytes": 1e6}


def summarize_front(study, tune, tune_dir: Path) -> dict:
    """Write trials.csv, pareto.json, pareto.png and summary.json; returns the summary."""
    import optuna

    from mlrun.engine.run_dir import write_json

    objectives = list(tune.objectives)
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    front = sorted(study.best_trials, key=lambda t: t.number) if completed else []
    on_front = {t.number for t in front}
    counts = {s.name.lower(): len(study.get_trials(states=(s,))) for s in optuna.trial.TrialState}
    summary = {
        "study": study.study_name,
        "trials": len(study.trials),
        "states": counts,
        "folder": str(tune_dir),
        "objectives": dict(tune.objectives),
        "trained": completed[0].user_attrs.get("trained") if completed else None,
        "front": unique_members([member(t, tune) for t in front]),
        "dominated": [t.number for t in completed if t.number not in on_front],
        "stages": stage_counts(study.trials),
        "first_failure": first_failure(study),
    }
    write_csv(study, tune, tune_dir / "trials.csv", on_front)
    summary["plot"] = write_plot(completed, on_front, objectives, summary["trained"], tune_dir / "pareto.png")
    write_json(tune_dir / "pareto.json", {"objectives": summary["objectives"], "front": summary["front"]})
    write_json(tune_dir / "summary.json", summary)
    return summary


def member(trial, tune) -> dict:
    return {
        "number": trial.number,
        "values": dict(zip(tune.objectives, trial.values)),
        "params": {k: decode(v, tune.space[k]) for k, v in trial.params.items() if k in tune.space},
        "dir": trial.user_attrs.get("dir"),
        "metrics": trial.user_attrs.get("metrics", {}),
        "vs_trained": trial.user_attrs.get("vs_trained", {}),
        # False when another process held the CPU while the trained model or the stage was timed.
        "latency_trusted": trial.user_attrs.get("latency_trusted", True),
    }


def stage_counts(trials) -> dict[str, int]:
    """How many stage results the trials used and how many were computed (the rest were shared)."""
    used = [stage for t in trials for stage in t.user_attrs.get("stages", [])]
    return {"used": len(used), "computed": len(set(used))}


def unique_members(members: list[dict]) -> list[dict]:
    """One member per chain: a sampler that draws the same values again (NSGA-II does, from a small
    space), or values that differ only in a stage left out, ties with itself on the front; the repeats
    are listed under the first (`repeats`). The same chain is the same last stage folder."""
    first: dict[str, dict] = {}
    for row in members:
        key = row["dir"] or repr(sorted(row["params"].items()))
        if key in first:
            first[key]["repeats"].append(row["number"])
        else:
            first[key] = {**row, "repeats": []}
    return list(first.values())


def write_csv(study, tune, path: Path, on_front: set[int]) -> None:
    keys = sorted({k for t in study.trials for k in t.params})
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["number", "state", "pareto", *tune.objectives, *keys, "dir", "error"])
        for t in study.trials:
            values = t.values or [""] * len(tune.objectives)
            params = [t.params.get(k, "") for k in keys]
            extra = [t.user_attrs.get("dir", ""), t.user_attrs.get("error", "")]
            out.writerow([t.number, t.state.name, t.number in on_front, *values, *params, *extra])


def show(key: str, value: float) -> str:
    from mlrun.tracking.figures import format_figure

    return format_figure(value / _UNITS.get(key, 1.0))  # four significant digits, as every printed figure


def heading(key: str) -> str:
    return f"{key} (MB)" if key in _UNITS else key


def in_effect(params: dict) -> dict:
    """The settings that shaped a chain: a stage left out (`compress.N.enabled: false`) shows only that."""
    off = {key.rpartition(".")[0] for key, value in params.items() if key.endswith(".enabled") and value is False}
    return {k: v for k, v in params.items() if k.rpartition(".")[0] not in off or k.endswith(".enabled")}


def front_table(summary: dict) -> str:
    """The front as text: trial, each objective, the change against the trained model, the settings."""
    from mlrun.tracking.figures import format_figure

    objectives = list(summary["objectives"])
    header = ["trial", *(heading(k) for k in objectives), "smaller x", "speedup b1", "settings"]
    lines = [header]
    for row in summary["front"]:
        vs = row["vs_trained"]
        settings = " ".join(f"{k.removeprefix('compress.')}={v}" for k, v in in_effect(row["params"]).items())
        if row["repeats"]:
            also = "trials" if len(row["repeats"]) > 1 else "trial"
            settings += f" (also {also} {', '.join(map(str, row['repeats']))})"
        lines.append(
            [
                str(row["number"]),
                *(show(k, row["values"][k]) for k in objectives),
                format_figure(vs.get("smaller_file", float("nan"))),
                format_figure(vs.get("speedup_b1", float("nan"))) + ("" if row["latency_trusted"] else " ?"),
                settings,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = "\n".join(
        "  ".join(
            cell.ljust(w) if i in (0, len(header) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in lines
    )
    if all(row["latency_trusted"] for row in summary["front"]):
        return table
    return table + (
        "\n? timed while another process held the CPU (its timings spread too wide): that speedup and latency "
        "are not to be trusted; search on a quiet machine when latency matters"
    )


def write_plot(completed, on_front: set[int], objectives: list[str], trained: dict | None, path: Path) -> str | None:
    """pareto.png: the first objective against each other one, front members marked; None without matplotlib
    or with a single objective (no front to draw)."""
    if len(objectives) < 2 or not completed:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: clusters have no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    first, others = objectives[0], objectives[1:]
    figure, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 4), squeeze=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ax, other in zip(axes[0], others):
            for members, style in ((False, {"c": "0.7", "label": "dominated"}), (True, {"c": "C3", "label": "front"})):
                points = [t for t in completed if (t.number in on_front) == members]
                x = [t.values[objectives.index(other)] / _UNITS.get(other, 1) for t in points]
                y = [t.values[0] / _UNITS.get(first, 1) for t in points]
                ax.scatter(x, y, s=30, **style)
                if members:
                    for t, xi, yi in zip(points, x, y):
                        ax.annotate(str(t.number), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if trained and other in (*trained, "file_bytes") and first.startswith("val/"):
                tx = trained[other] / _UNITS.get(other, 1) if other in trained else None
                ty = trained["metrics"].get(first)
                if tx is not None and ty is not None:
                    ax.scatter([tx], [ty], marker="*", s=120, c="k", label="trained")
            ax.set_xlabel(heading(other))
            ax.set_ylabel(heading(first))
            ax.legend(fontsize=8)
        figure.suptitle("compress search: Pareto front")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name
