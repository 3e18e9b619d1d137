"""`mlrun compare`: the table of differing keys and results, the PNG curves, the HTML report in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import chromium  # noqa: F401 - the fixture
from tests.conftest import REPO, read_jsonl, run_cli, tiny_config, write_config

CLI_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two finished runs that differ in optimizer.lr, and the same two as the trials of a study."""
    folder = tmp_path_factory.mktemp("compare")
    config = tiny_config(train={"epochs": 2, "log_every": "4st", "eval_every": "1ep", "checkpoint_every": "1ep"})
    path = write_config(folder, config)
    for name, lr in (("base", "0.01"), ("slow", "0.001")):
        result = run_cli("train", path, f"name={name}", f"optimizer.lr={lr}", cwd=folder)
        assert result.returncode == 0, result.stderr
    for number, name in enumerate(("base", "slow")):
        shutil.copytree(folder / "runs" / name, folder / "runs" / "study" / "tune" / f"trial-{number:04d}")
    return folder


def compare_json(folder: Path, *args: str) -> dict:
    result = run_cli("compare", *args, "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # --json: one document and nothing else on stdout


def test_table_has_differing_keys_and_each_runs_results(runs):
    report = compare_json(runs, "runs/base", "runs/slow", "--out", "cmp")
    assert report["differing_keys"] == ["optimizer.lr"]  # name/output_dir differ but are not choices
    assert report["metric"] == "val/accuracy" and report["lower_is_better"] is False
    for row in report["runs"]:
        run_dir = runs / row["path"]
        summary = json.loads((run_dir / "summary.json").read_text())
        accuracy = [line["val/accuracy"] for line in read_jsonl(run_dir / "metrics.jsonl") if "val/accuracy" in line]
        assert row["best val/accuracy"] == max(accuracy)
        assert row["final val/accuracy"] == summary["final"]["val/accuracy"]
        assert row["steps"] == summary["steps"] and row["samples/s"] == summary["samples_per_s"]
        assert row["peak memory MiB"] == pytest.approx(summary["peak_memory_bytes"] / 2**20)
    assert [row["optimizer.lr"] for row in report["runs"]] == [1e-2, 1e-3]


def test_printed_table_ranks_by_chosen_metric(runs):
    result = run_cli("compare", "runs/base", "runs/slow", "--metric", "val/loss", "--out", "cmp", cwd=runs)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "val/loss (lower is better)" in lines[0] and "differing keys: optimizer.lr" in lines[0]
    assert lines[1].split()[:3] == ["run", "optimizer.lr", "status"] and "best val/loss" in lines[1]
    assert lines[2].split()[:2] == ["base", "0.01"] and lines[3].split()[:2] == ["slow", "0.001"]


def test_quoted_globs_expand_and_skip_folders_that_are_not_runs(runs):
    trials = compare_json(runs, "runs/study/tune/trial-*", "--out", "cmp")  # quoted: no shell expansion
    assert [row["run"] for row in trials["runs"]] == ["trial-0000", "trial-0001"]
    every = compare_json(runs, "runs/*", "--out", "cmp")  # runs/study is not a run: skipped
    assert [row["run"] for row in every["runs"]] == ["base", "slow"]


def test_bad_run_or_metric_exits_2_with_one_line(runs):
    missing = run_cli("compare", "runs/base", "runs/nope", cwd=runs)
    assert missing.returncode == 2 and "'runs/nope' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    typo = run_cli("compare", "runs/*", "--metric", "val/acc", cwd=runs)
    assert typo.returncode == 2 and "Did you mean 'val/accuracy'" in typo.stderr


def not_blank(png: Path, box: tuple[int, int, int, int] | None = None) -> bool:
    """More than a handful of colours and of non-white pixels: something was drawn."""
    image = Image.open(png).convert("RGB")
    image = image.crop(box) if box else image
    colours = image.getcolors(maxcolors=1 << 20) or []
    drawn = sum(count for count, rgb in colours if rgb != (255, 255, 255))
    return len(colours) > 20 and drawn > 0.01 * image.width * image.height


def test_png_overlays_loss_metric_and_lr(runs):
    report = compare_json(runs, "runs/base", "runs/slow", "--out", "cmp")
    png = runs / report["files"]["png"]
    assert png.name == "curves.png" and not_blank(png)
    width, height = Image.open(png).size
    assert width > 2 * height  # three panels side by side


def test_html_report_renders_its_plots_in_headless_chromium(runs, chromium, tmp_path):  # noqa: F811
    report = compare_json(runs, "runs/base", "runs/slow", "--out", "cmp")
    page = runs / report["files"]["html"]
    text = page.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", text)  # self-contained: no script is fetched
    assert len(text) > 3_000_000 and "plotly.js" in text  # the library itself is inlined
    dom = chromium.dom(page)
    assert dom.count('class="main-svg"') >= 2  # plotly drew its figure
    assert dom.count('class="trace scatter') == 2 * 3  # two runs x (loss, val/accuracy, lr)
    assert "<td>base</td>" in dom and "<td>0.001</td>" in dom
    shot = chromium.screenshot(page, tmp_path / "report.png")
    assert not_blank(shot, box=(0, 400, 1400, 1000))  # the plots' part of the page, not only the table


@pytest.mark.e2e  # a fresh interpreter's imports
def test_compare_reads_files_only_and_imports_no_torch(runs):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mlrun.commands.compare import run_compare\n"
        "run_compare(['runs/*'], None, Path('cmp'), True)\n"
        "assert 'torch' not in sys.modules, 'compare imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=runs, env=CLI_ENV)
    assert result.returncode == 0, result.stderr


def test_tune_compress_and_tracking_settings_are_not_a_difference_between_runs():
    from mlrun.reporting.runs import RunRecord, differing_keys

    # A study's trial records no tune section; the run it was searched from does. Compress stages and
    # trackers (a user trial: "differing keys: compress, tracking" between runs that trained alike) neither.
    searched = RunRecord(
        Path("a"),
        "a",
        {"optimizer.lr": 0.1, "tune.trials": 20, "tune.space.optimizer.lr.low": 1e-4, "compress": [{"name": "prune"}]},
        {},
    )
    searched.config["tracking"] = [{"name": "mlflow"}]
    trial = RunRecord(Path("b"), "b", {"optimizer.lr": 0.01}, {})
    assert differing_keys([searched, trial]) == ["optimizer.lr"]


def test_a_key_one_run_lacks_and_another_has_null_is_no_difference():
    """`init_from: null` beside `init_from: {run: a, path: null}` showed init_from and init_from.path as
    differing columns of dashes; only init_from.run differs."""
    from pathlib import Path

    from mlrun.reporting.runs import RunRecord, differing_keys, flatten

    plain = RunRecord(Path("a"), "a", flatten({"init_from": None, "seed": 0}), {}, [])
    tuned = RunRecord(Path("b"), "b", flatten({"init_from": {"run": "runs/a", "path": None}, "seed": 0}), {}, [])
    assert differing_keys([plain, tuned]) == ["init_from.run"]


def test_the_better_direction_of_a_named_figure_does_not_depend_on_the_order_of_the_runs():
    """A run recorded with the old default (mode: min on val/accuracy) listed first made compare rank
    accuracy lower-is-better; listed second, higher (a user trial)."""
    from mlrun.reporting.results import lower_is_better
    from mlrun.reporting.runs import RunRecord

    old = RunRecord(Path("a"), "a", {"train.best.monitor": "val/accuracy", "train.best.mode": "min"}, {})
    new = RunRecord(Path("b"), "b", {"train.best.monitor": "val/accuracy", "train.best.mode": "max"}, {})
    assert lower_is_better([old, new], "val/accuracy") is False is lower_is_better([new, old], "val/accuracy")
    custom = RunRecord(Path("c"), "c", {"train.best.monitor": "val/custom", "train.best.mode": "max"}, {})
    assert lower_is_better([custom], "val/custom") is False  # a name that says nothing: the config decides


def copy_of(runs: Path, tmp_path: Path) -> Path:
    """The module's runs in a folder of the test's own, to damage at will."""
    shutil.copytree(runs / "runs", tmp_path / "runs", ignore=shutil.ignore_patterns("study"))
    return tmp_path


def test_a_damaged_summary_is_named_and_the_other_runs_are_compared(runs, tmp_path):
    """A run killed while writing summary.json left it empty or cut short: compare ended with
    'unexpected error: JSONDecodeError' (exit 1) without naming the file."""
    folder = copy_of(runs, tmp_path)
    (folder / "runs" / "slow" / "summary.json").write_text('{"status": "compl')
    result = run_cli("compare", "runs/base", "runs/slow", "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "runs/slow/summary.json is not valid JSON" in result.stderr and "Traceback" not in result.stderr
    rows = {row["run"]: row for row in json.loads(result.stdout)["runs"]}
    assert rows["slow"]["status"] == "unknown" and rows["base"]["status"] == "completed"
    assert rows["slow"]["best val/accuracy"] is not None  # read from its metrics.jsonl


def test_export_folders_and_folders_train_did_not_make_are_left_out_with_a_note(runs, tmp_path):
    """Export folders were listed as runs 'not started'; a hand-written config.yaml, diffed against resolved
    ones, gave about 50 false differing keys."""
    folder = copy_of(runs, tmp_path)
    exported = folder / "runs" / "base" / "export" / "onnx-none"
    exported.mkdir(parents=True)
    shutil.copy(folder / "runs" / "base" / "config.yaml", exported / "config.yaml")
    (exported / "export.json").write_text("{}")
    (folder / "runs" / "typed").mkdir()
    (folder / "runs" / "typed" / "config.yaml").write_text("name: typed\nmodel: {name: mlp}\n")
    result = run_cli("compare", "runs/*", "runs/base/export/*", "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["run"] for row in report["runs"]] == ["base", "slow"] and report["differing_keys"] == ["optimizer.lr"]
    assert "runs/base/export/onnx-none is an export folder" in result.stderr
    assert "runs/typed was never trained" in result.stderr
    alone = run_cli("compare", "runs/base/export/*", cwd=folder)
    assert alone.returncode == 2 and "nothing to compare" in alone.stderr and "export folder" in alone.stderr


def test_config_values_in_the_table_keep_four_significant_digits():
    """`optimizer.lr 100000000.0` and a sampled `0.08311303692128176` were printed as stored."""
    from mlrun.commands.compare import format_cell

    settings = frozenset({"optimizer.lr"})
    assert format_cell(settings, "optimizer.lr", 1e8) == "1e+08"
    assert format_cell(settings, "optimizer.lr", 0.08311303692128176) == "0.08311"
    assert format_cell(settings, "optimizer.lr", 0.003) == "0.003"  # as the user wrote it
    assert format_cell(settings, "best val/loss", 0.08311303692128176) == "0.08311"


def test_a_run_with_no_logged_point_is_named_not_silently_left_out_of_the_curves(runs, tmp_path):
    """A run that failed before its first log line was missing from curves.png's legend without a word."""
    folder = copy_of(runs, tmp_path)
    (folder / "runs" / "slow" / "metrics.jsonl").write_text("")
    result = run_cli("compare", "runs/base", "runs/slow", "--out", "cmp", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "slow has no logged point to draw" in result.stderr
    assert "slow has no logged point to draw" in (folder / "cmp" / "report.html").read_text()
