"""`mlrun train CONFIG [k=v ...] [--resume auto|never|PATH] [--overwrite] [--allow-config-change] [--json]`."""

from __future__ import annotations

import os
from pathlib import Path

from mlrun.config.load import load_config


def run_train(
    path: Path, overrides: list[str], resume: str, overwrite: bool, allow_config_change: bool, json_output: bool = False
) -> None:
    config = load_config(path, overrides)
    from mlrun.engine.run import run_training
    from mlrun.engine.run_dir import read_summary

    run_training(config, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change)
    run_dir = Path(config.output_dir) / config.name
    if json_output:
        from mlrun.jsonout import print_json

        print_json(read_summary(run_dir))
    elif not any(spec.name == "console" for spec in config.tracking) and os.environ.get("RANK", "0") == "0":
        # No console tracker (a config kept quiet for tuning): still say how the command ended and where.
        summary = read_summary(run_dir) or {}
        print(f"mlrun: {summary.get('status', 'ended')} after {summary.get('steps', '?')} steps; run folder {run_dir}")
