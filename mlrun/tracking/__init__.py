"""Trackers (registry `trackers`): console, jsonl (always on), tensorboard, wandb, mlflow."""

from mlrun.tracking import console, jsonl, mlflow_run, tensorboard, wandb_run  # noqa: F401
