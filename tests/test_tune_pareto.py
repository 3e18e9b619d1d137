"""`mlrun tune` with tune.objectives: a multi-objective search over compress settings and its Pareto front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_config, write_config

# Prune then cluster, no fine-tuning: a trial is a few seconds of measuring, not training.
STAGES = [
    {"name": "prune", "sparsity": 0.3, "schedule": "one_shot", "finetune": False},
    {"name": "cluster", "clusters": 16, "finetune": False},
]
SEARCH = {
    "trials": 8,
    "sampler": {"name": "nsga2", "seed": 0, "population_size": 4},
    "objectives": {"val/accuracy": "maximize", "file_bytes": "minimize"},
    "space": {
        "compress.0.sparsity": {"type": "categorical", "choices": [0.3, 0.6, 0.9]},
        "compress.1.clusters": {"type": "categorical", "choices": [2, 4, 16, 64]},
    },
}


def train_and_search(folder: Path, name: str, search: dict) -> dict:
    """Train a tiny MLP as `name` in `folder`, run the compress search `search` on it; tune --json's summary."""
    config = tiny_config(name=name, model={"name": "mlp", "hidden_sizes": [64, 32], "dropout": 0.0})
    config.update(tracking=["jsonl"], compress=STAGES, tune=search)
    path = write_config(folder, config, f"{name}.yaml")
    assert (trained := run_cli("train", path, cwd=folder)).returncode == 0, trained.stderr
    assert f"completed after 48 steps; run folder runs/{name}" in trained.stdout  # said without a console tracker
    result = run_cli("tune", path, "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, dict]:
    """A trained tiny MLP and a finished compress search on it: (folder, tune --json summary)."""
    folder = tmp_path_factory.mktemp("pareto")
    return folder, train_and_search(folder, "base", SEARCH)


def dominates(a: list[float], b: list[float], signs: list[float]) -> bool:
    """a at least as good as b on every objective and better on one (signs: +1 maximise, -1 minimise)."""
    better_or_equal = all(s * x >= s * y for x, y, s in zip(a, b, signs))
    return better_or_equal and any(s * x > s * y for x, y, s in zip(a, b, signs))


def test_compress_search_writes_a_front_of_non_dominated_trials(searched) -> None:
    folder, summary = searched
    tune_dir = folder / "runs/base/tune/compress"
    objectives = list(SEARCH["objectives"])
    signs = [1.0 if SEARCH["objectives"][k] == "maximize" else -1.0 for k in objectives]
    trials = list((tune_dir / "trials.csv").read_text().splitlines()[1:])
    assert len(trials) == SEARCH["trials"] and summary["states"]["complete"] == SEARCH["trials"]
    values = {}
    for line in trials:
        cells = line.split(",")
        values[int(cells[0])] = [float(cells[3]), float(cells[4])]
    front = {m["number"]: [m["values"][k] for k in objectives] for m in summary["front"]}
    assert front and summary["dominated"], "the search should leave both front members and dominated trials"
    for number, point in front.items():  # nothing beats a front member
        assert point == values[number]
        assert not any(dominates(other, point, signs) for other in values.values())
    for number in summary["dominated"]:  # every excluded trial is beaten by a member
        assert number not in front
        assert any(dominates(point, values[number], signs) for point in front.values())
    # Every trial is a member, a repeat of a member's settings (a tie, listed once), or dominated.
    repeats = {n: m for m in summary["front"] for n in m["repeats"]}
    assert set(values) == set(front) | set(repeats) | set(summary["dominated"])
    for number, member in repeats.items():
        assert values[number] == front[member["number"]]
    # The size objective is the real file the last stage wrote (bit-packed cluster indices).
    for member in summary["front"]:
        stored = folder / member["dir"] / "compressed.safetensors"
        assert member["values"]["file_bytes"] == stored.stat().st_size
    assert all(isinstance(member["latency_trusted"], bool) for member in summary["front"])
    on_disk = json.loads((tune_dir / "pareto.json").read_text())
    assert [m["number"] for m in on_disk["front"]] == sorted(front)
    assert (tune_dir / "pareto.png").stat().st_size > 0


def test_a_front_member_exports_with_its_recorded_accuracy(searched) -> None:
    folder, summary = searched
    member = max(summary["front"], key=lambda m: m["values"]["val/accuracy"])
    stage_dir = folder / member["dir"]
    assert stage_dir.parent == folder / "runs/base/tune/compress/stages"  # the search's shared stages
    result = run_cli("export", stage_dir, "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["verification"]["metric_export"] == pytest.approx(member["values"]["val/accuracy"], abs=1e-6)
    # Exports are dense: a safetensors export is the fp32 model's size, not a multiple of the member's packed file.
    dense = run_cli("export", stage_dir, "--format", "safetensors", "--out", "dense", "--json", cwd=folder)
    assert dense.returncode == 0, dense.stderr
    assert 0.95 < json.loads(dense.stdout)["verification"]["size_ratio_to_fp32"] < 1.1


def test_compare_html_shows_the_front(searched) -> None:
    folder, summary = searched
    result = run_cli("compare", "runs/base", "--out", "cmp", cwd=folder)
    assert result.returncode == 0, result.stderr
    page = (folder / "cmp/report.html").read_text()
    assert "Pareto front" in page
    for member in summary["front"]:
        assert f"trial {member['number']}" in page
    # The terminal says the front is there, and --json holds it (it held none: a user trial).
    assert f"has a Pareto front of {len(summary['front'])} member(s)" in result.stderr
    report = json.loads(run_cli("compare", "runs/base", "--out", "cmp", "--json", cwd=folder).stdout)
    assert [m["number"] for m in report["fronts"]["base"]["front"]] == [m["number"] for m in summary["front"]]


def test_unknown_objective_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tiny_config(name="bad", compress=STAGES, tune={**SEARCH, "objectives": {"file_size": "minimize"}})
    path = write_config(tmp_path, config, "bad.yaml")
    result = run_cli("tune", path, cwd=tmp_path)
    assert result.returncode == 2
    assert "tune.objectives.file_size" in result.stderr and "file_bytes" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_space_key_outside_compress_exits_2(tmp_path: Path) -> None:
    space = {**SEARCH["space"], "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}
    path = write_config(tmp_path, tiny_config(name="bad", compress=STAGES, tune={**SEARCH, "space": space}), "b.yaml")
    result = run_cli("tune", path, cwd=tmp_path)
    assert result.returncode == 2 and "tune.space.optimizer.lr" in result.stderr


def test_a_stage_left_out_runs_the_chain_without_it(searched) -> None:
    folder, _ = searched
    result = run_cli("compress", "base.yaml", "compress.1.enabled=false", "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["stage"] for row in report["stages"]] == ["trained", "prune"]
    assert not (folder / report["folder"] / "2-cluster").exists()
    none = run_cli("compress", "base.yaml", "compress.0.enabled=false", "compress.1.enabled=false", cwd=folder)
    assert none.returncode == 2 and "every stage has enabled: false" in none.stderr


def test_a_search_tries_the_chain_with_and_without_a_stage_and_computes_each_stage_once(tmp_path: Path) -> None:
    space = {
        "compress.1.enabled": {"type": "categorical", "choices": [True, False]},
        "compress.1.clusters": {"type": "categorical", "choices": [4, 16]},
    }
    search = {**SEARCH, "trials": 6, "sampler": {"name": "nsga2", "seed": 1, "population_size": 2}, "space": space}
    summary = train_and_search(tmp_path, "toggle", search)
    trials = tmp_path / "runs/toggle/tune/compress"
    reports = [json.loads((d / "compress.json").read_text()) for d in sorted(trials.glob("trial-*"))]
    chains = {tuple(row["stage"] for row in report["stages"][1:]) for report in reports}
    assert chains == {("prune", "cluster"), ("prune",)}  # both arms were tried
    # Every trial starts with the same prune: it ran once, and at most three chains exist (prune alone:
    # the clusters of a stage left out do not matter), so 6 trials computed at most 3 stages.
    computed = sorted(p.name for p in (trials / "stages").iterdir() if p.is_dir())
    assert len(computed) == summary["stages"]["computed"] <= 3 < summary["stages"]["used"]
    # The trained model was timed once for the search: every trial's ratios are against the same figures.
    assert len({json.dumps(report["stages"][0], sort_keys=True) for report in reports}) == 1
    assert len({report["stages"][1]["dir"] for report in reports}) == 1
    # A shared stage holds what a chain of its own would: trial 0 (the config's values) against `mlrun compress`.
    alone = run_cli("compress", "toggle.yaml", "--json", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert json.loads(alone.stdout)["stages"][-1]["metrics"] == reports[0]["stages"][-1]["metrics"]
    # Clustering (bit-packed 4-bit indices) is what makes the file small: the front's smallest has it.
    smallest = min(summary["front"], key=lambda m: m["values"]["file_bytes"])
    assert Path(smallest["dir"]).name.startswith("2-cluster-")


@pytest.mark.parametrize("key", ["metric", "direction"])
def test_metric_or_direction_beside_objectives_exits_2(tmp_path: Path, key: str) -> None:
    value = {"metric": "val/accuracy", "direction": "maximize"}[key]
    config = tiny_config(name="bad", compress=STAGES, tune={**SEARCH, key: value})
    result = run_cli("tune", write_config(tmp_path, config, "bad.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and f"tune.{key}" in result.stderr and "Traceback" not in result.stderr


def test_a_rerun_with_another_chain_is_refused(searched) -> None:
    folder, _ = searched
    result = run_cli("tune", "base.yaml", "compress.1.finetune={train.epochs: 1}", "--trials", "9", cwd=folder)
    assert result.returncode == 2 and "compress.1.finetune: false -> " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_space_of_few_chains_points_to_the_grid(searched) -> None:
    folder, _ = searched  # 12 chains (3 sparsities x 4 cluster counts), 8 trials asked for
    sampled = run_cli("tune", "base.yaml", cwd=folder)
    assert sampled.returncode == 0, sampled.stderr
    assert "tune.space holds 12 chains" in sampled.stderr and "tune.sampler: {name: grid}" in sampled.stderr
    # The member to export is the best on the first objective (it was trial 0's, at chance accuracy; a user trial).
    front = json.loads(next(folder.glob("runs/base/tune*/compress/pareto.json")).read_text())["front"]
    best = max(front, key=lambda member: member["values"]["val/accuracy"])
    assert f"export a member (the best val/accuracy): mlrun export {best['dir']}" in sampled.stdout, sampled.stdout
    gridded = run_cli("tune", "base.yaml", "tune.sampler={name: grid, seed: 0}", cwd=folder)
    assert gridded.returncode == 0 and "chains" not in gridded.stderr, gridded.stderr


def test_a_compress_search_refuses_overrides_its_stages_would_not_read(tmp_path: Path) -> None:
    """`optimizer.lr=0.5` beside a compress search was accepted and read by nothing (a user trial)."""
    path = write_config(tmp_path, tiny_config(name="fresh", compress=STAGES, tune=SEARCH), "fresh.yaml")
    result = run_cli("tune", path, "optimizer.lr=0.5", "tune.trials=2", cwd=tmp_path)
    assert (
        result.returncode == 2 and "a compress search reads" in result.stderr and "'optimizer.lr=0.5'" in result.stderr
    )
    assert "tune.trials" not in result.stderr.partition("not ")[2].partition(":")[0]  # tune.* is read


def test_a_search_of_an_untrained_run_says_how_to_train_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, tiny_config(name="fresh", compress=STAGES, tune=SEARCH), "fresh.yaml")
    result = run_cli("tune", path, "name=other", cwd=tmp_path)
    assert result.returncode == 2 and f"train it first: mlrun train {path} name=other" in result.stderr, result.stderr


def test_the_front_table_marks_speedups_timed_on_a_busy_cpu() -> None:
    from mlrun.tuning.pareto import front_table

    row = {"number": 3, "values": {"file_bytes": 2e5}, "params": {"compress.0.sparsity": 0.9}, "repeats": []}
    quiet = {**row, "vs_trained": {"smaller_file": 40.0, "speedup_b1": 1.5}, "latency_trusted": True}
    busy = {**row, "number": 4, "vs_trained": {"smaller_file": 40.0, "speedup_b1": 395.3}, "latency_trusted": False}
    summary = {"objectives": {"file_bytes": "minimize"}, "front": [quiet]}
    assert "?" not in front_table(summary)
    lines = front_table({**summary, "front": [quiet, busy]}).splitlines()
    assert "395.3 ?" in lines[2] and "1.5 ?" not in lines[1] and "1.5" in lines[1]
    assert lines[-1].startswith("? timed while another process held the CPU")


def test_the_front_table_shows_a_left_out_stage_without_its_unused_settings() -> None:
    """A trial with 0.enabled=False was listed with 0.ratio=0.875, a setting nothing read (a user trial)."""
    from mlrun.tuning.pareto import front_table

    params = {"compress.0.enabled": False, "compress.0.ratio": 0.875, "compress.1.clusters": 16}
    row = {"number": 1, "values": {"file_bytes": 2e5}, "params": params, "repeats": []}
    summary = {"objectives": {"file_bytes": "minimize"}, "front": [{**row, "vs_trained": {}, "latency_trusted": True}]}
    line = front_table(summary).splitlines()[1]
    assert "0.enabled=False" in line and "1.clusters=16" in line and "ratio" not in line


def test_a_timing_another_process_disturbed_is_taken_again(monkeypatch) -> None:
    from mlrun.compression import measure

    readings = iter([{"ms": 16.0, "spread": 0.9}, {"ms": 0.2, "spread": 0.1}, {"ms": 9.0, "spread": 0.05}])
    monkeypatch.setattr(measure, "timed", lambda module, inputs: next(readings))
    assert measure.steady_timed(None, ()) == {"ms": 0.2, "spread": 0.1}  # the steady second; no third
    always = iter([{"ms": 16.0, "spread": 0.9}, {"ms": 15.0, "spread": 0.5}, {"ms": 17.0, "spread": 0.7}])
    monkeypatch.setattr(measure, "timed", lambda module, inputs: next(always))
    assert measure.steady_timed(None, ()) == {"ms": 15.0, "spread": 0.5}  # three tries, the steadiest kept
