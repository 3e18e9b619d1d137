"""A run directory works from any working directory: config.yaml stores the run's data paths absolute."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from mlrun.config.paths import resolve_local_paths
from tests.conftest import run_cli, tiny_config, write_config


def _project(tmp_path):
    """A project folder with its data next to the config, referred to by relative paths."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    np.savez(project / "data" / "train.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    config = tiny_config(
        name="portable",
        data={"name": "npz", "path": "data/train.npz", "batch_size": 32},
        train={"epochs": 2, "log_every": "5st", "eval_every": "1ep", "checkpoint_every": "1ep"},
    )
    return project, write_config(project, config)


def test_eval_and_predict_work_from_another_directory_than_train(tmp_path):
    project, config = _project(tmp_path)
    assert run_cli("train", config, cwd=project).returncode == 0
    run = project / "runs" / "portable"
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["data"]["path"] == str(project / "data" / "train.npz")
    assert recorded["output_dir"] == "runs"  # the run's own location stays as written
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli("eval", run, "--json", cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    final = json.loads((run / "summary.json").read_text())["final"]
    assert json.loads(result.stdout)["metrics"]["val/accuracy"] == pytest.approx(final["val/accuracy"])
    rows = "\n".join(",".join(str(v) for v in row) for row in np.eye(6)[:3])
    (elsewhere / "new.csv").write_text("f0,f1,f2,f3,f4,f5\n" + rows + "\n")
    predicted = run_cli("predict", run, "new.csv", "--json", cwd=elsewhere)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert len(json.loads(predicted.stdout)["predictions"]) == 3


def test_a_run_recorded_with_relative_paths_resumes_without_a_config_change(tmp_path):
    project, config = _project(tmp_path)
    assert run_cli("train", config, "train.epochs=1", cwd=project).returncode == 0
    run = project / "runs" / "portable"
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    recorded["data"]["path"] = "data/train.npz"  # as runs made before paths were stored absolute
    (run / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    result = run_cli("train", config, "train.epochs=2", "--resume", checkpoint, cwd=project)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train.epochs: 1 -> 2" in result.stderr and "data.path" not in result.stderr


def test_only_existing_paths_are_resolved_and_names_are_kept(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.parquet").write_text("")
    (tmp_path / "classifier.py").write_text("")
    (tmp_path / "accuracy").mkdir()
    config = {
        "name": "x",
        "output_dir": "runs",
        "loss": "cross_entropy",
        "metrics": ["accuracy"],
        "data": {"name": "parquet", "path": "shards/*.parquet", "val_path": "missing/*.parquet"},
        "model": {"name": "configs.two_input:build", "path": "shards"},
        "init_from": {"run": None, "path": "shards/a.parquet", "exclude": ["classifier.*"]},
        "techniques": [{"name": "lora", "target_modules": ["accuracy"]}],
    }
    resolved = resolve_local_paths(config, str(tmp_path))
    assert resolved["data"]["path"] == f"{tmp_path}/shards/*.parquet"
    assert resolved["data"]["val_path"] == "missing/*.parquet"  # nothing there: left for its own message
    assert resolved["model"] == {"name": "configs.two_input:build", "path": f"{tmp_path}/shards"}
    assert resolved["init_from"] == {"run": None, "path": f"{tmp_path}/shards/a.parquet", "exclude": ["classifier.*"]}
    assert resolved["metrics"] == ["accuracy"] and resolved["techniques"] == config["techniques"]
    assert resolved["loss"] == "cross_entropy" and resolved["output_dir"] == "runs"
