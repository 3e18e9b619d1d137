"""The console tracker: an 80-column progress line that keeps its figures, one-line evaluations, one number format."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console as RichConsole

from mlrun.tracking.base import RunInfo
from mlrun.tracking.console import Console
from mlrun.tracking.figures import format_figure


def terminal(width: int = 80) -> RichConsole:
    return RichConsole(width=width, file=io.StringIO(), force_terminal=True, color_system=None)


def progress_line(tracker: Console, width: int = 80) -> str:
    """The progress line as a terminal of `width` columns shows it now."""
    screen = terminal(width)
    with screen.capture() as captured:
        screen.print(tracker.progress_bar.get_renderable())
    return captured.get().rstrip("\n")


def started(screen: RichConsole, total: int, per_epoch: int, metric: str, **options) -> Console:
    tracker = Console(4.0, False, console=screen, **options)
    config = {"name": "demo", "metrics": [metric], "train": {}}
    tracker.start(RunInfo(Path("runs/demo"), config, total, per_epoch, 0, True))
    return tracker


@pytest.mark.parametrize(
    "total, step, metric, expected",
    [
        (4800, 1300, "accuracy", "step 1300/4800 ep 5/15 loss 0.1235  accuracy 0.8123"),
        (100000, 12300, "balanced_accuracy", "step  12300/100000 ep 16/125 loss 1.235e-04  balanced_accuracy 0.8123"),
    ],
    ids=["typical", "long"],
)
def test_progress_line_at_80_columns_keeps_step_epoch_loss_metric_and_eta(total, step, metric, expected):
    tracker = started(terminal(), total, 800 if total > 10000 else 320, metric)
    try:
        tracker.progress(step // 2, 0)
        loss = 0.123456 if total < 10000 else 0.000123456
        tracker.log({"train/loss": loss, "train/lr": 3e-4, "train/samples_per_s": 12960.0}, step, 3.0)
        tracker.log({"val/loss": 0.2, f"val/{metric}": 0.81234}, step, 3.0)
        tracker.progress(step, step // (800 if total > 10000 else 320))
        line = progress_line(tracker)
    finally:
        tracker.progress_bar.stop()
    assert len(line) <= 80 and "\n" not in line, line
    assert line.startswith(expected), line
    assert re.search(r"\d+:\d\d$", line), line  # the time left, last
    assert "lr" not in line and "samples_per_s" not in line  # only what matters on the line


def test_evaluation_prints_one_line_unless_a_table_is_asked_for():
    screen = terminal()
    tracker = started(screen, 100, 10, "accuracy")
    tracker.log({"val/loss": 0.5, "val/accuracy": 0.75}, 10, 1.0)
    tracker.progress_bar.stop()
    printed = [line for line in screen.file.getvalue().splitlines() if "eval" in line]
    assert printed == ["eval step 10  val/loss 0.5000  val/accuracy 0.7500"] or printed[-1].endswith(
        "eval step 10  val/loss 0.5000  val/accuracy 0.7500"
    )
    screen = terminal()
    tracker = started(screen, 100, 10, "accuracy", evaluation="table")
    tracker.log({"val/loss": 0.5, "val/accuracy": 0.75}, 10, 1.0)
    tracker.progress_bar.stop()
    assert "evaluation at step 10" in screen.file.getvalue() and "┃" in screen.file.getvalue()


NUMBER = re.compile(r"^-?(\d+|\d+\.\d+|\d\.\d{3}e[+-]\d\d)$")


def test_plain_lines_write_every_figure_with_four_significant_digits(capsys):
    tracker = Console(4.0, True)
    tracker.start(RunInfo(Path("runs/demo"), {"name": "demo", "metrics": ["accuracy"]}, 48, 16, 0, True))
    for lr, speed in ((0.01, 823.147), (0.00083, 12960.4), (0.0, 9252.0)):
        tracker.log({"train/loss": 1.3949, "train/lr": lr, "train/samples_per_s": speed}, 5, 0.31)
    lines = capsys.readouterr().out.splitlines()[1:]
    assert lines[0] == "step 5/48  epoch 0.31  loss 1.395  lr 0.01000  samples_per_s 823.1"
    assert lines[1].endswith("lr 8.300e-04  samples_per_s 12960")
    for line in lines:
        figures = line.split("  ")[2:]
        for figure in figures:
            value = figure.split(" ")[1]
            assert NUMBER.match(value), figure
            digits = value.split("e")[0].lstrip("-").replace(".", "").lstrip("0")
            whole = "." not in value and "e" not in value and float(value) >= 1e4  # 12960: no decimals to cut
            assert value == "0" or len(digits) == 4 or whole, figure


@pytest.mark.parametrize(
    "value, text",
    [
        (0.6172, "0.6172"),
        (12960.2, "12960"),
        (0.00967, "0.009670"),
        (8.3e-4, "8.300e-04"),
        (9.99996, "10.00"),
        (48, "48"),
    ],
)
def test_one_number_format(value, text):
    assert format_figure(value) == text
