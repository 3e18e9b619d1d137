"""`mlrun train CONFIG [k=v ...] [--resume auto|never|PATH] [--overwrite] [--allow-config-change] [--json]`."""

from __future__ import annotations

from pathlib import Path

from mlrun.config.load import load_config


def run_train(
    path: Path, overrides: list[str], resume: str, overwrite: bool, allow_config_change: bool, json_output: bool = False
) -> None:
    config = load_config(path, overrides)
    from mlrun.engine.run import run_training
    from mlrun.engine.run_dir import read_summary

    run_training(config, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change)
    if json_output:
        from mlrun.jsonout import print_json

        print_json(read_summary(Path(config.output_dir) / config.name))
