"""The wandb tracker with the real package, offline: one W&B run id across a SIGKILL and its resume."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from mlrun.tracking import wandb_files as wandb_offline
from tests.conftest import needs, read_jsonl, run_cli, tiny_config, write_config

pytestmark = needs("wandb")

PROBE = "tests.fixtures:probe_mlp"


def train(tmp_path: Path, config: dict, *args: str):
    path = write_config(tmp_path, config, f"{config['name']}.yaml")
    return run_cli("train", path, *args, cwd=tmp_path), tmp_path / "runs" / config["name"]


def jsonl_rows(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl's figures merged by step, as W&B rows: {step: {figure: value}}."""
    rows: dict[int, dict] = {}
    for line in read_jsonl(run_dir / "metrics.jsonl"):
        figures = {key: value for key, value in line.items() if key not in ("step", "epoch", "time")}
        rows.setdefault(line["step"], {}).update(figures)
    return rows


def wandb_rows(run_dir: Path) -> dict[int, dict]:
    rows = wandb_offline.history(run_dir)
    steps = [row["_step"] for row in rows]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {row.pop("_step"): row for row in rows}


def wandb_config(name: str) -> dict:
    config = tiny_config(name=name, tracking=[{"name": "console", "plain": True}, "wandb"])
    config["train"] = {**config["train"], "epochs": 2}
    return config


def test_wandb_offline_run_holds_config_and_every_figure_by_step(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    result, run_dir = train(tmp_path, wandb_config("logged"))
    assert result.returncode == 0, result.stderr
    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    assert wandb_offline.run_ids(run_dir) == {run_id}  # offline by default: written under the run folder
    assert wandb_rows(run_dir) == jsonl_rows(run_dir)
    config = wandb_offline.config(run_dir)
    assert config["optimizer.lr"] == 0.01 and config["mlrun.world_size"] == "1"


@pytest.mark.e2e
def test_wandb_offline_run_continues_across_sigkill_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = wandb_config("killed")
    config["model"] = {"name": PROBE, "kill_at": 24}
    # Checkpoints at 7, 14, 21; SIGKILL at step 24, after step 22's figures were logged (and logged again on resume).
    config["train"] = {**config["train"], "checkpoint_every": "7st", "log_every": "2st"}
    killed, run_dir = train(tmp_path, config)
    assert killed.returncode == -signal.SIGKILL
    config["model"] = {"name": PROBE}
    resumed, _ = train(tmp_path, config, "--allow-config-change")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 21" in resumed.stdout
    assert len(wandb_offline.run_files(run_dir)) == 2  # one folder an attempt ...
    assert wandb_offline.run_ids(run_dir) == {json.loads((run_dir / "wandb_run.json").read_text())["id"]}  # one run
    assert wandb_rows(run_dir) == jsonl_rows(run_dir)  # each step once, the complete history
