"""Console output: a rich progress bar on a terminal, plain log lines otherwise (CI, SLURM logs)."""

from __future__ import annotations

import sys
import time
from typing import Any

from pydantic import PositiveFloat

from mlrun.registry import trackers
from mlrun.tracking.base import RunInfo, Tracker


def format_figure(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


class Console(Tracker):
    def __init__(self, refresh_per_second: float, force_plain: bool):
        self.refresh, self.plain = refresh_per_second, force_plain or not sys.stdout.isatty()
        self.progress_bar = None

    def start(self, info: RunInfo) -> None:
        self.info, self.enabled = info, info.is_main
        self.last_step, self.last_time = info.start_step, time.perf_counter()
        if not self.enabled:
            return
        resumed = f" (resumed at step {info.start_step})" if info.start_step else ""
        print(
            f"mlrun: training {info.config['name']}: {info.total_steps} optimizer steps{resumed} -> {info.run_dir}",
            flush=True,
        )
        if not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress_bar = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[figures]}"),
                TimeRemainingColumn(),
                refresh_per_second=self.refresh,
            )
            self.task = self.progress_bar.add_task(
                "train", total=info.total_steps, completed=info.start_step, epoch=1, figures=""
            )
            self.progress_bar.start()

    def progress(self, step: int, epoch: int) -> None:
        if self.progress_bar is not None:
            self.progress_bar.update(self.task, completed=step, epoch=epoch + 1)

    def log(self, figures: dict[str, float], step: int, epoch: float) -> None:
        if not self.enabled:
            return
        if any(k.startswith("val/") for k in figures):
            self._evaluation(figures, step)
            return
        shown = {k.removeprefix("train/"): v for k, v in figures.items()}
        text = "  ".join(f"{k} {format_figure(v)}" for k, v in shown.items())
        if self.progress_bar is not None:
            self.progress_bar.update(self.task, figures=text)
        else:
            print(f"step {step}/{self.info.total_steps}  epoch {epoch:.2f}  {text}", flush=True)

    def _evaluation(self, figures: dict[str, float], step: int) -> None:
        if self.progress_bar is None:
            text = "  ".join(f"{k} {format_figure(v)}" for k, v in figures.items())
            print(f"eval step {step}  {text}", flush=True)
            return
        from rich.table import Table

        table = Table(title=f"evaluation at step {step}", show_header=True)
        for key in figures:
            table.add_column(key)
        table.add_row(*(format_figure(v) for v in figures.values()))
        self.progress_bar.console.print(table)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.progress_bar is not None:
            self.progress_bar.stop()
        if self.enabled:
            best = summary.get("best") or {}
            extra = f", best {best['monitor']} {format_figure(best['value'])} at step {best['step']}" if best else ""
            print(
                f"mlrun: {summary['status']} after {summary['steps']} steps in {summary['wall_time_s']:.1f}s "
                f"({summary['samples_per_s']:.0f} samples/s){extra}",
                flush=True,
            )
            if summary.get("energy"):
                from mlrun.energy.meter import describe_energy

                print(f"mlrun: energy {describe_energy(summary['energy'])}", flush=True)


@trackers.register("console")
def console(*, refresh_per_second: PositiveFloat = 4.0, plain: bool = False) -> Tracker:
    """Progress bar and evaluation tables on a terminal; plain lines when stdout is not a terminal.

    Args:
        refresh_per_second: progress-bar redraws per second.
        plain: always print plain lines, even on a terminal.
    """
    return Console(refresh_per_second, plain)
