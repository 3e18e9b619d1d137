"""A tuning study in the hosted trackers: the study one MLflow run, each trial (or PBT member) a child run.

    mlrun tune config.yaml tracking=[mlflow]      # MLflow's UI: one parent run, a child per trial

Trials train with `tracking=[jsonl]` unless the config tracks to MLflow or W&B; then they keep those
trackers, with the study's tracking server and experiment and `parent_run` set to the study's run
(MLflow), or grouped under the study's name (W&B, whose runs have groups rather than parents).
A trial's run records its sampled values as params and its end (`mlrun.status`: completed, pruned,
failed); the study's run records the tune section as params, each finished trial's value by trial
number, the best value and params, and trials.csv and best.yaml as artifacts.

The study's run id is kept in tune/mlflow_run.json, so a rerun of the study (which continues it)
continues its run, and worker processes (`--workers`) find the same parent.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from mlrun.config.schema import ExperimentConfig
from mlrun.errors import failure_reason

TRIALS_FILE = "trial_tracking.json"  # in tune/: the tracker specs each trial trains with
RECORD = "mlflow_run.json"


def open_study_run(config: ExperimentConfig, tune_dir: Path, study_name: str) -> StudyRun | None:
    """Start or continue the study's run; writes the trials' tracker specs. None without a hosted tracker."""
    trials: list[Any] = ["jsonl"]
    study = None
    for spec in config.tracking:
        if spec.name == "wandb":
            project = spec.settings.get("project") or config.name  # a trial's own name would be its project
            trials.append({"name": "wandb", **spec.settings, "project": project, "group": study_name})
        if spec.name == "mlflow":
            study = StudyRun(config, spec.settings, tune_dir, study_name)
            if study.open():
                trials.append({"name": "mlflow", **study.child_settings()})
    (tune_dir / TRIALS_FILE).write_text(json.dumps(trials) + "\n")
    return study


def trial_tracking(tune_dir: Path) -> str:
    """The `tracking=` override of a trial: quiet (metrics.jsonl only) unless the study set hosted trackers."""
    try:
        trials = json.loads((tune_dir / TRIALS_FILE).read_text())
    except (OSError, ValueError):
        trials = ["jsonl"]
    return "tracking=" + json.dumps(trials)  # JSON is YAML: the override parser reads it as a list


class StudyRun:
    """The study's MLflow run; like every tracker, a failure warns once and never stops the study."""

    def __init__(self, config: ExperimentConfig, settings: dict[str, Any], tune_dir: Path, study_name: str):
        self.config, self.settings, self.tune_dir, self.study_name = config, settings, tune_dir, study_name
        self.run_id, self.failed = None, False

    def guarded(self, action, *args) -> bool:
        if self.failed:
            return False
        try:
            action(*args)
            return True
        except Exception as exc:
            self.failed = True
            print(
                f"mlrun: warning: the study's mlflow run failed ({failure_reason(exc)}); the study goes on",
                file=sys.stderr,
                flush=True,
            )
            return False

    def open(self) -> bool:
        return self.guarded(self._open)

    def _open(self) -> None:
        from mlrun.tracking.mlflow_run import (
            connect,
            default_uri,
            experiment_name,
            find_experiment,
            log_params,
            previous_run,
        )
        from mlrun.tracking.tensorboard import flatten

        dump = self.config.model_dump(mode="json")
        self.uri = self.settings.get("uri") or default_uri(dump)
        self.experiment = experiment_name(self.settings.get("experiment"), dump)
        self.client = connect(self.uri)
        record_path = self.tune_dir / RECORD
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        run = previous_run(self.client, record, self.uri)
        if run is None:
            experiment_id = find_experiment(self.client, self.experiment, dump, embedded="uri" not in self.settings)
            tags = {"mlrun.kind": "study", "mlrun.run_dir": str(self.tune_dir.resolve())}
            run = self.client.create_run(experiment_id, run_name=f"{self.study_name} (study)", tags=tags)
            self.run_id = run.info.run_id
            record_path.write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}, indent=2) + "\n")
            tune = flatten(dump["tune"] or {}, "tune.")
            log_params(self.client, self.run_id, {key: str(value)[:6000] for key, value in tune.items()})
        else:
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")

    def child_settings(self) -> dict[str, Any]:
        return {**self.settings, "uri": self.uri, "experiment": self.experiment, "parent_run": self.run_id}

    def finish(self, values: dict[int, float], summary: dict[str, Any], metric: str) -> None:
        """`values`: each finished trial's (member's) tuned figure by its number; `summary`: states, best."""
        if self.run_id is not None:
            self.guarded(self._finish, values, summary, metric)

    def _finish(self, values: dict[int, float], summary: dict[str, Any], metric: str) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metrics = [Metric(f"trials/{metric}", float(value), now, number) for number, value in sorted(values.items())]
        states = summary.get("states") or {}
        metrics += [Metric(f"trials/{state}", float(count), now, 0) for state, count in states.items() if count]
        params = []
        if summary.get("best"):
            best = summary["best"]
            metrics.append(Metric(f"best/{metric}", float(best["value"]), now, 0))
            params = [Param(f"best.{key}", str(value)) for key, value in best["params"].items()]
            params.append(Param("best.trial", str(best["number"])))
        self.client.log_batch(self.run_id, metrics=metrics)
        # A param cannot change: the first run of the study logs the best as params, every run as tags.
        if not any(key.startswith("best.") for key in self.client.get_run(self.run_id).data.params):
            self.client.log_batch(self.run_id, params=params)
        for param in params:
            self.client.set_tag(self.run_id, f"mlrun.{param.key}", param.value)
        for name in ("trials.csv", "best.yaml", "pbt.json"):
            if (self.tune_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.tune_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")
