"""Trackers (registry `trackers`): console, jsonl (always on), tensorboard, wandb, mlflow."""

from mlrun.tracking import console, hosted, jsonl, tensorboard  # noqa: F401
