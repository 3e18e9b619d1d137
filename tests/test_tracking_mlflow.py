"""The mlflow tracker with the real package: one MLflow run per mlrun run, across a SIGKILL and its resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlrun.tracking.tensorboard import flatten
from tests.conftest import needs, read_jsonl, run_cli, tiny_config, write_config

pytestmark = needs("mlflow")


def mlflow_client(tracking_uri: str):
    from mlflow import MlflowClient  # imported when used (conftest.needs)

    return MlflowClient(tracking_uri=tracking_uri)


PROBE = "tests.fixtures:probe_mlp"


def train(tmp_path: Path, config: dict, *args: str, **run):
    path = write_config(tmp_path, config, f"{config['name']}.yaml")
    return run_cli("train", path, *args, cwd=tmp_path, **run), tmp_path / "runs" / config["name"]


def tracked(run_dir: Path):
    """(client, run) of the MLflow run this run directory records."""
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    client = mlflow_client(record["tracking_uri"])
    return client, client.get_run(record["run_id"])


def histories(client, run) -> dict[str, list[tuple[int, float]]]:
    """Each figure's (step, value) points as MLflow holds them (system metrics aside), by step."""
    return {
        key: sorted((point.step, point.value) for point in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
        if not key.startswith("system/")
    }


def jsonl_histories(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for line in read_jsonl(run_dir / "metrics.jsonl"):
        for key, value in line.items():
            if key not in ("step", "epoch", "time"):
                found.setdefault(key, []).append((line["step"], float(value)))
    return {key: sorted(points) for key, points in found.items()}


def mlflow_config(name: str, **tracker) -> dict:
    config = tiny_config(name=name, tracking=[{"name": "console", "plain": True}, {"name": "mlflow", **tracker}])
    config["train"] = {**config["train"], "epochs": 2}
    return config


def test_mlflow_records_params_every_figure_tags_and_artifacts(tmp_path):
    result, run_dir = train(tmp_path, mlflow_config("tracked", system_metrics=False))
    assert result.returncode == 0, result.stderr
    assert "INFO mlflow" not in result.stderr  # MLflow's set-up chatter stays out of the user's terminal
    client, run = tracked(run_dir)
    # The embedded default: a SQLite database beside the run folders, one experiment named after the config.
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    assert client.get_experiment(run.info.experiment_id).name == "tracked"
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    resolved = __import__("yaml").safe_load((run_dir / "config.yaml").read_text())
    assert run.data.params == {key: str(value) for key, value in flatten(resolved).items()}
    assert histories(client, run) == jsonl_histories(run_dir)
    tags = run.data.tags
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert tags["mlrun.run_dir"] == str(run_dir.resolve())
    assert tags["mlrun.host"] == manifest["host"] and tags["mlrun.world_size"] == "1"
    assert tags["mlrun.version"] == manifest["versions"]["mlrun"] and tags["mlrun.status"] == "completed"
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "manifest.json", "model.safetensors"} <= artifacts
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # artifacts beside the database, not in the cwd
    # `mlrun export` adds the exported model to the same MLflow run.
    exported = run_cli("export", run_dir, "--format", "safetensors", "--json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["mlflow_artifacts"] == f"runs:/{run.info.run_id}/export/safetensors-none"
    files = {item.path for item in client.list_artifacts(run.info.run_id, "export/safetensors-none")}
    assert {"export/safetensors-none/model.safetensors", "export/safetensors-none/export.json"} <= files


@pytest.mark.e2e
def test_mlflow_run_continues_across_sigkills_and_resumes_with_each_step_once(tmp_path):
    config = mlflow_config("killed", system_metrics=True)
    config["train"] = {**config["train"], "checkpoint_every": "7st", "log_every": "2st"}  # checkpoints 7, 14, 21, 28
    # 1st attempt: SIGKILL inside step 22, after the step-21 checkpoint and before the next log: the
    # figures of steps 16-20 were logged but not yet sent; the resume sends them.
    config["model"] = {"name": PROBE, "kill_at": 22}
    killed, run_dir = train(tmp_path, config)
    assert killed.returncode == -signal.SIGKILL
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    # 2nd attempt, from step 21: SIGKILL inside step 26, after logging steps 22 and 24, which the
    # 3rd attempt logs again from step 21: MLflow must not get them twice.
    config["model"] = {"name": PROBE, "kill_at": 5}
    killed, _ = train(tmp_path, config, "--allow-config-change")
    assert killed.returncode == -signal.SIGKILL
    config["model"] = {"name": PROBE}
    resumed, _ = train(tmp_path, config, "--allow-config-change", subprocess=False)  # only killed runs need a process
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 21" in resumed.stdout
    client, run = tracked(run_dir)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    figures = histories(client, run)
    for key, points in figures.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"
    assert figures == jsonl_histories(run_dir)  # every step, with the values metrics.jsonl holds
    # A param keeps its first value; the changes the resumes accepted are a tag.
    assert run.data.params["model.kill_at"] == "22"
    assert run.data.tags["mlrun.config_changed.model.kill_at"] == "22 -> None at step 21"
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "manifest.json", "model.safetensors"} <= artifacts


@pytest.mark.e2e  # a run dies by SIGKILL
def test_a_resume_from_an_older_checkpoint_sends_no_step_twice(tmp_path):
    """A resume that passed over a truncated newest checkpoint (or rewound a finished run with --resume
    .../step-N) sent the steps after its checkpoint again: MLflow held 55 twice, W&B went 55, 35, 40."""
    config = mlflow_config("older")
    config["train"] = {**config["train"], "checkpoint_every": "7st", "log_every": "2st", "keep_checkpoints": 10}
    config["model"] = {"name": PROBE, "kill_at": 31}  # after step 30 logged: steps up to checkpoint 28 sent
    killed, run_dir = train(tmp_path, config)
    assert killed.returncode == -signal.SIGKILL
    newest = run_dir / "checkpoints" / "step-00000028"
    damaged = max(
        (f for f in newest.iterdir() if f.is_file() and f.name != "files.json"), key=lambda f: f.stat().st_size
    )
    damaged.write_bytes(damaged.read_bytes()[:100])  # passed over: the resume starts from step 21
    config["model"] = {"name": PROBE}
    resumed, _ = train(tmp_path, config, "--allow-config-change", subprocess=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 21" in resumed.stdout and "already holds steps 22-28" in resumed.stderr
    client, run = tracked(run_dir)
    timing = ("train/samples_per_s", "train/data_wait_fraction")  # measured again by the resume, not recomputed
    tracked_points, logged = histories(client, run), jsonl_histories(run_dir)
    assert {k: v for k, v in tracked_points.items() if k not in timing} == {
        k: v for k, v in logged.items() if k not in timing
    }  # each step once, with the values metrics.jsonl holds
    assert all([s for s, _ in tracked_points[k]] == [s for s, _ in logged[k]] for k in timing)
    # A finished run rewound to step 21 with one more epoch: no step twice.
    rewound, _ = train(
        tmp_path, config, "train.epochs=3", "--resume", str(run_dir / "checkpoints" / "step-00000021"), subprocess=False
    )
    assert rewound.returncode == 0, rewound.stderr
    for key, points in histories(client, run).items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"


@pytest.mark.e2e  # a torchrun launch
def test_a_resume_on_another_process_count_is_no_config_change_in_mlflow(tmp_path):
    """A checkpoint of 2 processes resumed on 1 goes on with accumulation 2 (the same global batch): the
    MLflow run was tagged `mlrun.config_changed.train.grad_accum_steps: 1 -> 2` (a user trial), though
    config.yaml and the run's settings are unchanged; the re-split is in manifest.json."""
    from tests.test_distributed import torchrun

    config = mlflow_config("moved", system_metrics=False)
    config["train"] = {**config["train"], "epochs": None, "max_steps": 4, "checkpoint_every": "2st"}
    assert torchrun(config, tmp_path).returncode == 0
    run_dir = tmp_path / "runs" / "moved"
    checkpoint = run_dir / "checkpoints" / "step-00000002"
    resumed, _ = train(tmp_path, config, "--resume", str(checkpoint), subprocess=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed on 1 process(es)" in resumed.stderr
    client, run = tracked(run_dir)
    assert not [tag for tag in run.data.tags if tag.startswith("mlrun.config_changed.")]
    assert run.data.params["train.grad_accum_steps"] == "1" and run.data.params["data.batch_size"] == "32"


@pytest.mark.e2e  # a run dies by SIGKILL
def test_a_restart_after_a_kill_before_any_checkpoint_ends_the_abandoned_mlflow_run(tmp_path):
    """The killed attempt's MLflow run stayed RUNNING for ever beside the restart's new run (a user trial)."""
    config = mlflow_config("early")
    config["train"] = {**config["train"], "checkpoint_every": None}
    config["model"] = {"name": PROBE, "kill_at": 3}
    killed, run_dir = train(tmp_path, config)
    assert killed.returncode == -signal.SIGKILL
    abandoned = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    config["model"] = {"name": PROBE}
    restarted, _ = train(tmp_path, config, "--allow-config-change", subprocess=False)
    assert restarted.returncode == 0, restarted.stderr
    client, run = tracked(run_dir)
    assert run.info.run_id != abandoned and run.info.status == "FINISHED"
    old = client.get_run(abandoned)
    assert old.info.status == "KILLED" and old.data.tags["mlrun.status"].startswith("abandoned")


def sent_steps(tracker) -> list[int]:
    return [point.step for point in tracker.client.get_metric_history(tracker.run_id, "train/loss")]


@pytest.mark.parametrize("checkpoint_every", ["7st", None])
def test_figures_reach_mlflow_once_a_checkpoint_holds_them_or_at_once_without_checkpoints(tmp_path, checkpoint_every):
    from mlrun.registry import trackers
    from mlrun.tracking.base import RunInfo

    run_dir = tmp_path / "runs" / "unit"
    run_dir.mkdir(parents=True)
    config = {"name": "unit", "output_dir": str(tmp_path / "runs"), "train": {"checkpoint_every": checkpoint_every}}
    tracker = trackers.build("mlflow", system_metrics=False)
    tracker.start(RunInfo(run_dir, config, total_steps=20, steps_per_epoch=10, start_step=0, is_main=True))
    tracker.log({"train/loss": 1.0}, step=5, epoch=0.5)
    if checkpoint_every is None:
        assert sent_steps(tracker) == [5]
        return
    assert sent_steps(tracker) == []  # a resume could still log step 5 again
    (run_dir / "checkpoints" / ".tmp-step-00000007").mkdir(parents=True)  # a checkpoint being written
    tracker.log({"train/loss": 0.9}, step=6, epoch=0.6)
    assert sent_steps(tracker) == []
    (run_dir / "checkpoints" / ".tmp-step-00000007").rename(run_dir / "checkpoints" / "step-00000007")
    tracker.log({"train/loss": 0.8}, step=10, epoch=1.0)
    assert sent_steps(tracker) == [5, 6]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_mlflow_server_warns_once_and_training_completes(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at the first refused connection
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = mlflow_config("offline", uri=uri)
    result, run_dir = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "mlflow tracker failed" in line]
    assert len(warnings) == 1, result.stderr
    assert "training goes on" in warnings[0]
    # Run again as it was, the finished run says its MLflow run lacks figures and how to send them; once
    # the server answers (here the embedded database), that command catches it up without training.
    again, _ = train(tmp_path, config)
    assert again.returncode == 2 and "tracked run in mlflow holds steps up to 0 of 32" in again.stderr, again.stderr
    newest = Path("runs", "offline", "checkpoints", "step-00000032")
    assert f"--resume {newest} as it is sends the rest" in again.stderr
    caught_up, _ = train(tmp_path, mlflow_config("offline"), "--resume", str(tmp_path / newest), subprocess=False)
    assert caught_up.returncode == 0, caught_up.stderr
    client, run = tracked(run_dir)
    assert histories(client, run) == jsonl_histories(run_dir)
    assert "tracked run in" not in train(tmp_path, mlflow_config("offline"))[0].stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert read_jsonl(run_dir / "metrics.jsonl")[-1]["step"] == summary["steps"]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder; stopped after the test."""
    port = free_port()
    folder = tmp_path / "server"
    folder.mkdir()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


@pytest.mark.e2e
def test_a_run_logged_to_a_real_mlflow_server_reads_back(tmp_path, mlflow_server):
    result, run_dir = train(
        tmp_path, mlflow_config("served", uri=mlflow_server, system_metrics=False), subprocess=False
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # everything went to the server
    client = mlflow_client(mlflow_server)
    experiment = client.get_experiment_by_name("served")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert run.info.status == "FINISHED"
    assert histories(client, run) == jsonl_histories(run_dir)
    assert run.data.params["optimizer.lr"] == "0.01"
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "manifest.json", "model.safetensors"} <= artifacts


@pytest.mark.slow
def test_tune_study_is_one_parent_run_with_a_child_run_per_trial(tmp_path):
    config = mlflow_config("study", system_metrics=False, weights=False)
    config["train"] = {**config["train"], "epochs": 1}
    config["tune"] = {
        "metric": "val/accuracy",
        "direction": "maximize",
        "trials": 3,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "space": {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
    }
    path = write_config(tmp_path, config, "study.yaml")
    result = run_cli("tune", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    client = mlflow_client(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("mlrun.kind") == "study"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 4 and len(children) == 3
    tune_dir = tmp_path / "runs" / "study" / "tune"
    with (tune_dir / "trials.csv").open() as handle:
        trials = {int(row["number"]): row for row in csv.DictReader(handle)}
    for child in children:
        # The child is its trial's own run: runs/study/tune/trial-<number>.
        trial = trials[int(Path(child.data.tags["mlrun.run_dir"]).name.removeprefix("trial-"))]
        assert float(child.data.params["optimizer.lr"]) == float(trial["optimizer.lr"])
        assert child.data.tags["mlrun.status"] == "completed" and child.info.status == "FINISHED"
        assert child.data.metrics["val/accuracy"] == float(trial["value"])
    values = client.get_metric_history(parent.info.run_id, "trials/val/accuracy")
    assert sorted(point.step for point in values) == [0, 1, 2]
    assert parent.info.status == "FINISHED" and parent.data.params["tune.metric"] == "val/accuracy"
    assert {"trials.csv", "best.yaml"} <= {item.path for item in client.list_artifacts(parent.info.run_id)}


def test_a_stop_signal_inside_a_trackers_call_ends_the_run_as_interrupted():
    """SIGTERM's RunInterrupted raised inside mlflow's HTTP call came back wrapped in MlflowException, and
    the run said 'the mlflow tracker failed (... stopped by SIGTERM ...)' and went on."""
    from mlrun.errors import RunInterrupted
    from mlrun.tracking.hosted import HostedTracker

    def wrapped_stop():
        try:
            raise RunInterrupted("stopped by SIGTERM", exit_code=143)
        except RunInterrupted as stop:
            raise RuntimeError("the library's own error") from stop

    tracker = HostedTracker()
    with pytest.raises(RunInterrupted):
        tracker.guarded(wrapped_stop)
    assert not tracker.failed
    assert tracker.guarded(lambda: (_ for _ in ()).throw(RuntimeError("down"))) is False and tracker.failed


def test_a_uri_mlflow_stores_no_runs_under_exits_2_at_validate(tmp_path, monkeypatch):
    """foo://bar passed validate and failed mid-run with a warning; a plain folder (MLflow's file store, which
    MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE is set) failed the same way, its fix cut off."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri, says in (("foo://bar", "has the scheme 'foo'"), (str(tmp_path / "store"), "MLFLOW_ALLOW_FILE_STORE")):
        path = write_config(tmp_path, mlflow_config("uri", uri=uri))
        result = run_cli("validate", path, cwd=tmp_path)
        assert result.returncode == 2 and says in result.stderr, result.stderr
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the opt-out MLflow names
    assert run_cli("validate", path, cwd=tmp_path).returncode == 0


def test_lagging_names_hosted_trackers_whose_record_is_behind_metrics_jsonl(tmp_path):
    """The finished-run hint reads each tracker's own record file (its registry trait) and passes over a
    record written before mlrun kept `sent_through`, which says nothing of what the tracked run holds."""
    from mlrun.tracking.hosted import lagging

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in (5, 10)))
    record = tmp_path / "mlflow_run.json"
    assert lagging(tmp_path, ["console", "mlflow"]) == ["mlflow holds steps up to 0 of 10"]  # never opened
    for held, expected in (({"run_id": "r"}, []), ({"sent_through": 5}, ["mlflow holds steps up to 5 of 10"])):
        record.write_text(json.dumps(held))
        assert lagging(tmp_path, ["mlflow"]) == expected
    record.write_text(json.dumps({"sent_through": 10}))
    assert lagging(tmp_path, ["mlflow", "jsonl"]) == []
