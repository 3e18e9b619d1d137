"""The `mlflow` tracker: one MLflow run per mlrun run, continued across resumes and SLURM requeues.

    mlrun train config.yaml tracking=[mlflow]
    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db

Without a server it writes to a SQLite database next to the run folders (<output_dir>/mlflow.db,
artifacts in <output_dir>/mlartifacts), one experiment per config name; `uri:` or
MLFLOW_TRACKING_URI points it at a server. It records the resolved config as params (flattened
keys), every figure under its metrics.jsonl name at its optimizer step, system metrics (CPU,
memory, GPU where present), tags (git sha and dirty flag, host, world size, SLURM job id, mlrun
version, run directory), and at the end config.yaml, summary.json, manifest.json and the final
weights as artifacts. The run id is kept in <run_dir>/mlflow_run.json. What a resume logs and
what it does not is explained in tracking/hosted.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mlrun.errors import UsageError, failure_reason
from mlrun.registry import trackers
from mlrun.tracking.base import RunInfo, Tracker
from mlrun.tracking.hosted import Batch, HostedTracker, require, run_tags
from mlrun.tracking.tensorboard import flatten

RECORD = "mlflow_run.json"
ARTIFACTS = ("config.yaml", "summary.json", "manifest.json")
WEIGHTS = ("model.safetensors", "best.safetensors")
# MLflow's run states; a trial the tuner pruned stopped early on purpose, like an interrupted run.
STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "interrupted": "KILLED", "pruned": "KILLED"}
MAX_PARAM_CHARS = 6000  # MLflow 3's limit on a param value
CHANGED = "mlrun.config_changed."  # tag prefix of a param a resume changed (params cannot change)


def default_uri(config: dict[str, Any]) -> str:
    """MLFLOW_TRACKING_URI, else the SQLite database in output_dir (MLflow 3's own default backend)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str((Path(config["output_dir"]) / "mlflow.db").resolve())


class MLflowTracker(HostedTracker):
    label = "mlflow"
    record_file = RECORD
    recovery = (
        "; the next resume of this run sends what the MLflow run lacks (once it finished: the same command with "
        "--resume <its newest checkpoint>)"
    )

    def __init__(self, uri: str | None, experiment: str | None, system_metrics: bool, weights: bool, parent_run):
        self.uri, self.experiment, self.system_metrics, self.weights = uri, experiment, system_metrics, weights
        self.parent_run, self.monitor = parent_run, None

    def open(self, info: RunInfo) -> None:
        uri = self.uri or default_uri(info.config)
        self.client = connect(uri)
        record = self.read_record()
        run = previous_run(self.client, record, uri)
        if run is not None and info.start_step == 0:  # a restart, not a resume: a new tracked run
            close_abandoned(self.client, run)
            run = None
        params = {key: str(value)[:MAX_PARAM_CHARS] for key, value in flatten(info.config).items()}
        if run is None:
            name = experiment_name(self.experiment, info.config)
            experiment_id = find_experiment(self.client, name, info.config, embedded=self.uri is None)
            tags = run_tags(info)
            if "mlrun.git_sha" in tags:  # MLflow's own column for the source version
                tags["mlflow.source.git.commit"] = tags["mlrun.git_sha"]
            if self.parent_run:  # a trial of `mlrun tune`: shown under the study's run
                tags["mlflow.parentRunId"] = self.parent_run
            run = self.client.create_run(experiment_id, run_name=info.config["name"], tags=tags)
            self.run_id = run.info.run_id
            self.write_record({"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id})
            self._log_params(params)
        else:
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self._resume_params(run.data.params, params, info.start_step)
            self.client.log_batch(self.run_id, tags=_tags(run_tags(info)))
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # Its own step counter (one per sample), continued on resume rather than restarted at 0.
            self.monitor = SystemMetricsMonitor(self.run_id, resume_logging=run is not None, tracking_uri=uri)
            self.monitor.start()

    def _log_params(self, params: dict[str, str]) -> None:
        log_params(self.client, self.run_id, params)

    def _resume_params(self, logged: dict[str, str], params: dict[str, str], step: int) -> None:
        """A param's value is fixed once logged: a resume with a changed config records the change as a tag."""
        new = {key: value for key, value in params.items() if key not in logged}
        changed = {
            f"{CHANGED}{key}": f"{value} -> {params.get(key, 'None')} at step {step}"[:MAX_PARAM_CHARS]
            for key, value in logged.items()
            if params.get(key, "None") != value  # a key the new config drops counts as set to None
        }
        if new:
            self._log_params(new)
        if changed:
            self.client.log_batch(self.run_id, tags=_tags(changed))

    def backfill(self, earlier: Batch) -> None:
        if not earlier:
            return
        run = self.client.get_run(self.run_id)
        present = {
            key: {point.step for point in self.client.get_metric_history(self.run_id, key)}
            for key in run.data.metrics
            if not key.startswith("system/")
        }
        missing: Batch = {}
        for step, (logged_at, figures) in earlier.items():
            lacking = {key: value for key, value in figures.items() if step not in present.get(key, ())}
            if lacking:
                missing[step] = (logged_at, lacking)
        self.send(missing)

    def send(self, batch: Batch) -> None:
        from mlflow.entities import Metric

        metrics = [
            Metric(key, float(value), int(logged_at * 1000), step)
            for step, (logged_at, figures) in sorted(batch.items())
            for key, value in figures.items()
            if isinstance(value, (int, float))
        ]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def close(self, summary: dict[str, Any]) -> None:
        if self.monitor is not None:
            self.monitor.finish()
        run_dir = self.info.run_dir
        try:
            for name in ARTIFACTS + (WEIGHTS if self.weights else ()):
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / name))
        finally:  # an upload that fails (a full artifact store) still ends the run with its status
            self.client.set_tag(self.run_id, "mlrun.status", summary["status"])
            self.client.set_terminated(self.run_id, STATUS.get(summary["status"], "FAILED"))


def connect(uri: str):
    """An MlflowClient for `uri` that gives up on a silent server in seconds, and keeps MLflow's INFO lines quiet."""
    # MLflow retries 7 times by default with 2 min timeouts: a server that does not answer would hold
    # training for many minutes before the tracker turns off. The user's own settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    from mlflow import MlflowClient

    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):  # database set-up, system monitor start/stop
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # The system monitor stops at its first failed call with a warning of its own; the tracker's
        # warning is the one a failure prints.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
    return MlflowClient(tracking_uri=uri)


def previous_run(client, record: dict[str, Any], uri: str):
    """The MLflow run a record names, on this tracking server and not deleted; None to start one."""
    if record.get("tracking_uri") != uri or not record.get("run_id"):
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(record["run_id"])
    except MlflowException:  # deleted from the server, or another database: a new run
        return None
    return run if run.info.lifecycle_stage == "active" else None


def close_abandoned(client, run) -> None:
    """An attempt killed before its first checkpoint left its MLflow run RUNNING; the restart that replaces it
    ends it as KILLED, so the server shows no run that is no longer going on."""
    if run.info.status == "RUNNING":
        client.set_tag(run.info.run_id, "mlrun.status", "abandoned: the run restarted from step 0")
        client.set_terminated(run.info.run_id, "KILLED")


def experiment_name(setting: str | None, config: dict[str, Any]) -> str:
    return setting or os.environ.get("MLFLOW_EXPERIMENT_NAME") or config["name"]


def find_experiment(client, name: str, config: dict[str, Any], embedded: bool) -> str:
    """The id of experiment `name`, created when missing (with the embedded default: artifacts beside the db)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if embedded and not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (Path(config["output_dir"]).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params a call
        client.log_batch(run_id, params=items[start : start + 100])


def log_export(run_dir: Path, folder: Path) -> str | None:
    """`mlrun export`: the exported folder as artifacts of the run's MLflow run (export/<folder name>).

    Returns the artifacts' runs:/ URI, or None when the run has no MLflow run or mlflow is not
    installed. A failure warns on stderr: the export itself is done and stays.
    """
    import importlib.util
    import json
    import sys

    record_path = run_dir / RECORD
    if not record_path.is_file() or importlib.util.find_spec("mlflow") is None:
        return None
    try:
        record = json.loads(record_path.read_text())
        client = connect(record["tracking_uri"])
        client.log_artifacts(record["run_id"], str(folder), artifact_path=f"export/{folder.name}")
    except Exception as exc:
        print(f"mlrun: warning: the export was not logged to MLflow ({failure_reason(exc)})", file=sys.stderr)
        return None
    return f"runs:/{record['run_id']}/export/{folder.name}"


def _tags(tags: dict[str, str]):
    from mlflow.entities import RunTag

    return [RunTag(key, value) for key, value in tags.items()]


@trackers.register("mlflow", record_file=RECORD)  # hosted.lagging() reads it
def mlflow(
    *,
    uri: str | None = None,
    experiment: str | None = None,
    system_metrics: bool = True,
    weights: bool = True,
    parent_run: str | None = None,
) -> Tracker:
    """MLflow: params, every figure by step, system metrics, tags and artifacts, one run across resumes.

    Args:
        uri: http://host:port or sqlite:///file.db; default MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db.
        experiment: experiment name; default MLFLOW_EXPERIMENT_NAME, else the config's name.
        system_metrics: log CPU, memory, disk, network and GPU use every 10 s (MLflow's system metrics).
        weights: log model.safetensors (and best.safetensors) as artifacts at the end.
        parent_run: id of the MLflow run this one is a child of (`mlrun tune` sets it for its trials).
    """
    require("mlflow", "mlflow")
    if uri is not None:
        check_uri(uri)
    return MLflowTracker(uri, experiment, system_metrics, weights, parent_run)


# Stores MLflow's client opens (SQLAlchemy dialects may add a driver: postgresql+psycopg2).
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc", "file")


def check_uri(uri: str) -> None:
    """Exit 2 at config load on a URI MLflow cannot store runs under: it failed mid-run with a warning, the
    run going on untracked (a user trial: foo://bar passed validate; a folder failed without its fix)."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in ("", *SCHEMES):
        raise UsageError(
            f"tracking.mlflow.uri: '{uri}' has the scheme '{scheme}', which MLflow stores no runs under; use "
            "http(s)://host:port, sqlite:///file.db, postgresql://..., or leave uri out (a SQLite file in output_dir)"
        )
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise UsageError(
            f"tracking.mlflow.uri: '{uri}' is a folder (MLflow's file store), which MLflow 3 refuses unless "
            f"MLFLOW_ALLOW_FILE_STORE=true is set; use sqlite:///{uri.removeprefix('file://')}/mlflow.db, or set it"
        )
