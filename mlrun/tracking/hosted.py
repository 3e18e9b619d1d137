"""wandb and MLflow through Accelerate's trackers, offline by default (clusters rarely reach the internet)."""

from __future__ import annotations

import importlib.util
import os

from mlrun.errors import UsageError
from mlrun.registry import trackers
from mlrun.tracking.base import RunInfo, Tracker
from mlrun.tracking.tensorboard import flatten


class AccelerateTracker(Tracker):
    def __init__(self, kind: str, project: str | None):
        self.kind, self.project, self.tracker = kind, project, None

    def start(self, info: RunInfo) -> None:
        if not info.is_main:
            return
        from accelerate.tracking import MLflowTracker, WandBTracker

        name = self.project or info.config["name"]
        if self.kind == "wandb":
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_DIR", str(info.run_dir))
            self.tracker = WandBTracker(name)
        else:
            os.environ.setdefault("MLFLOW_TRACKING_URI", (info.run_dir / "mlruns").as_uri())
            self.tracker = MLflowTracker(name)
        self.tracker.start()
        self.tracker.store_init_configuration(flatten(info.config))

    def log(self, figures, step, epoch) -> None:
        if self.tracker is not None:
            self.tracker.log(figures, step=step)

    def finish(self, summary) -> None:
        if self.tracker is not None:
            self.tracker.finish()


def _require(package: str, tracker: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise UsageError(f"tracker '{tracker}' needs the {package} package: pip install {package}")


@trackers.register("wandb")
def wandb(*, project: str | None = None) -> Tracker:
    """Weights & Biases through Accelerate, offline unless WANDB_MODE says otherwise.

    Args:
        project: wandb project; default the run name.
    """
    _require("wandb", "wandb")
    return AccelerateTracker("wandb", project)


@trackers.register("mlflow")
def mlflow(*, experiment: str | None = None) -> Tracker:
    """MLflow through Accelerate, into <run_dir>/mlruns unless MLFLOW_TRACKING_URI is set.

    Args:
        experiment: MLflow experiment name; default the run name.
    """
    _require("mlflow", "mlflow")
    return AccelerateTracker("mlflow", experiment)
