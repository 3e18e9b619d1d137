"""Console output: a rich progress line on a terminal, plain log lines otherwise (CI, SLURM logs).

The progress line keeps what matters at any width (80 columns included): step/total, epoch, the
training loss, the watched metric and the time left; the bar takes what room is left. An evaluation
prints one line (`evaluation: table` for the full table). Figures use one format (tracking/figures.py).
"""

from __future__ import annotations

import math
import sys
from typing import Any, Literal

from pydantic import PositiveFloat

from mlrun.registry import trackers
from mlrun.tracking.base import RunInfo, Tracker
from mlrun.tracking.figures import format_figure

__all__ = ["Console", "format_figure", "watched_metric"]


def watched_metric(config: dict[str, Any]) -> str | None:
    """The metric the progress line shows: the run's best / early-stopping monitor, else the first metric."""
    train = config.get("train") or {}
    for key in ("best", "early_stopping"):
        monitor = (train.get(key) or {}).get("monitor")
        if monitor and monitor != "train/loss":
            return monitor
    metrics = config.get("metrics") or []
    if metrics:
        first = metrics[0]
        return f"val/{first if isinstance(first, str) else first.get('name')}"
    return None


def short(key: str) -> str:
    return key.removeprefix("train/").removeprefix("val/")


class Console(Tracker):
    def __init__(self, refresh_per_second: float, force_plain: bool, evaluation: str = "line", console=None):
        self.refresh, self.evaluation = refresh_per_second, evaluation
        # `console`: a rich Console to draw on (tests give a fixed-width one); default: stdout's.
        self.console = console
        self.plain = force_plain or (console is None and not sys.stdout.isatty())
        self.progress_bar = None
        self.enabled = False  # until start(): finish() after a failed start must not raise

    def start(self, info: RunInfo) -> None:
        self.info, self.enabled = info, info.is_main
        self.metric = watched_metric(info.config)
        self.shown: dict[str, float] = {}  # loss and the watched metric, as last logged
        self.epochs = max(1, math.ceil(info.total_steps / max(info.steps_per_epoch, 1)))
        if not self.enabled:
            return
        resumed = f" (resumed at step {info.start_step})" if info.start_step else ""
        self._print(
            f"mlrun: training {info.config['name']}: {info.total_steps} optimizer steps{resumed} -> {info.run_dir}"
        )
        if not self.plain:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
            from rich.table import Column

            # Only the bar gives up room on a narrow terminal: the text columns never shrink.
            fixed = {"no_wrap": True, "overflow": "ignore"}
            self.progress_bar = Progress(
                TextColumn("{task.fields[position]}", table_column=Column(**fixed)),
                TextColumn("{task.fields[figures]}", table_column=Column(**fixed)),
                BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=3)),
                TimeRemainingColumn(
                    compact=True, elapsed_when_finished=True, table_column=Column(min_width=5, **fixed)
                ),
                refresh_per_second=self.refresh,
                console=self.console,
            )
            self.task = self.progress_bar.add_task(
                "train",
                total=info.total_steps,
                completed=info.start_step,
                position=self._position(info.start_step, 0),
                figures="",
            )
            self.progress_bar.start()

    def _position(self, step: int, epoch: int) -> str:
        width = len(str(self.info.total_steps))
        return f"step {step:>{width}}/{self.info.total_steps} ep {epoch + 1}/{self.epochs}"

    def _figures(self) -> str:
        return "  ".join(f"{short(k)} {format_figure(v)}" for k, v in self.shown.items())

    def _print(self, text: str) -> None:
        if self.console is not None or self.progress_bar is not None:
            (self.progress_bar.console if self.progress_bar is not None else self.console).print(text, highlight=False)
        else:
            print(text, flush=True)

    def progress(self, step: int, epoch: int) -> None:
        if self.progress_bar is not None:
            self.progress_bar.update(self.task, completed=step, position=self._position(step, epoch))

    def log(self, figures: dict[str, float], step: int, epoch: float) -> None:
        if not self.enabled:
            return
        for key in ("train/loss", self.metric):
            if key in figures:
                self.shown[key] = figures[key]
        if any(k.startswith("val/") for k in figures):
            self._evaluation(figures, step)
        elif self.progress_bar is None:
            text = "  ".join(f"{short(k)} {format_figure(v)}" for k, v in figures.items())
            self._print(f"step {step}/{self.info.total_steps}  epoch {epoch:.2f}  {text}")
        if self.progress_bar is not None:
            self.progress_bar.update(self.task, figures=self._figures())

    def _evaluation(self, figures: dict[str, float], step: int) -> None:
        if self.evaluation == "table" and self.progress_bar is not None:
            from rich.table import Table

            table = Table(title=f"evaluation at step {step}", show_header=True)
            for key in figures:
                table.add_column(key)
            table.add_row(*(format_figure(v) for v in figures.values()))
            self.progress_bar.console.print(table)
            return
        text = "  ".join(f"{k} {format_figure(v)}" for k, v in figures.items())
        self._print(f"eval step {step}  {text}")

    def finish(self, summary: dict[str, Any]) -> None:
        if self.progress_bar is not None:
            self.progress_bar.stop()
        if self.enabled:
            best = summary.get("best") or {}
            extra = f", best {best['monitor']} {format_figure(best['value'])} at step {best['step']}" if best else ""
            # Both figures over the whole run's training (a resumed run's earlier attempts too), never this
            # attempt's wall time beside the run's rate.
            self._print(
                f"mlrun: {summary['status']} after {summary['steps']} steps, {summary['train_time_s']:.1f}s of "
                f"training ({format_figure(float(summary['samples_per_s']))} samples/s){extra}"
            )
            if summary.get("energy"):
                from mlrun.energy.meter import describe_energy

                print(f"mlrun: energy {describe_energy(summary['energy'])}", flush=True)


@trackers.register("console")
def console(
    *,
    refresh_per_second: PositiveFloat = 4.0,
    plain: bool = False,
    evaluation: Literal["line", "table"] = "line",
) -> Tracker:
    """Progress line and evaluation lines on a terminal; plain lines when stdout is not a terminal.

    Args:
        refresh_per_second: progress-line redraws per second.
        plain: always print plain lines, even on a terminal.
        evaluation: each evaluation as one line of figures, or as a table.
    """
    return Console(refresh_per_second, plain, evaluation)
