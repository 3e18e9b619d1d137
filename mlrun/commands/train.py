"""`mlrun train CONFIG [k=v ...] [--resume auto|never|PATH] [--overwrite] [--allow-config-change]`."""

from __future__ import annotations

from pathlib import Path

from mlrun.config.load import load_config


def run_train(path: Path, overrides: list[str], resume: str, overwrite: bool, allow_config_change: bool) -> None:
    config = load_config(path, overrides)
    from mlrun.engine.run import run_training

    run_training(config, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change)
