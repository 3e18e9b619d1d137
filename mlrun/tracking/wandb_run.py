"""The `wandb` tracker: one Weights & Biases run per mlrun run, offline unless WANDB_MODE says otherwise.

    mlrun train config.yaml tracking=[wandb]
    wandb sync runs/<name>/wandb/offline-run-*       # upload later, from a machine that reaches W&B

Clusters rarely reach the internet, so the run is written offline under <run_dir>/wandb/ unless
`mode: online` or WANDB_MODE says otherwise. Its id is kept in <run_dir>/wandb_run.json and the
run is opened with resume="allow", so every attempt (a resume, a requeue) writes to the same run:
offline, each attempt is its own offline-run-*-<id> folder and `wandb sync` joins them into one
run. It records the resolved config (flattened keys, plus where the run ran under `mlrun.*`),
every figure under its metrics.jsonl name at its optimizer step, W&B's own system metrics, and
the final summary. What a resume logs and what it does not is explained in tracking/hosted.py.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from mlrun.registry import trackers
from mlrun.tracking.base import RunInfo, Tracker
from mlrun.tracking.hosted import Batch, HostedTracker, require, run_tags
from mlrun.tracking.tensorboard import flatten

RECORD = "wandb_run.json"


class WandbTracker(HostedTracker):
    label = "wandb"
    record_file = RECORD
    recovery = (
        "; the next resume of this run sends what it missed (once it finished: the same command with "
        "--resume <its newest checkpoint>)"
    )

    def __init__(self, project: str | None, entity: str | None, mode: str | None, group: str | None):
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.run = None

    def open(self, info: RunInfo) -> None:
        import wandb

        record = self.read_record()
        config = {**flatten(info.config), **run_tags(info)}
        self.run = wandb.init(
            id=record.get("id"),  # None the first time: W&B makes one, kept below
            resume="allow",
            project=self.project or info.config["name"],
            entity=self.entity,
            group=self.group,
            name=info.config["name"],
            dir=str(info.run_dir),
            mode=self.mode or os.environ.get("WANDB_MODE") or "offline",
            config=config,
            allow_val_change=True,  # a resume with --allow-config-change updates the changed keys
            # console="off": W&B would otherwise wrap stdout, which `--json` and the progress line own.
            settings=wandb.Settings(console="off", silent=True),
        )
        self.write_record({"id": self.run.id, "project": self.run.project})
        changes = _config_changes(info)
        if changes:
            self.run.summary["mlrun/config_changes"] = changes

    def backfill(self, earlier: Batch) -> None:
        """Steps of metrics.jsonl up to the resumed step that no earlier attempt's run file holds."""
        from mlrun.tracking.wandb_files import history

        present = {row["_step"] for row in history(self.info.run_dir, self.run.id)}
        # Online, the server's history ends before run.step, and W&B drops any step below it.
        self.send({step: entry for step, entry in earlier.items() if step not in present and step >= self.run.step})

    def send(self, batch: Batch) -> None:
        for step, (_, figures) in sorted(batch.items()):
            self.run.log(figures, step=step, commit=True)  # one row a step, written now

    def close(self, summary: dict[str, Any]) -> None:
        for key in ("status", "steps", "epochs", "wall_time_s", "samples_per_s", "peak_memory_bytes"):
            self.run.summary[f"mlrun/{key}"] = summary.get(key)
        for key, value in (summary.get("final") or {}).items():
            self.run.summary[f"final/{key}"] = value
        finished = summary["status"] in ("completed", "early_stopped")
        self.run.finish(exit_code=0 if finished else 1)


def _config_changes(info: RunInfo) -> list[dict[str, Any]]:
    """The config changes resumes accepted, from manifest.json (W&B keeps only a key's latest value)."""
    import json

    try:
        manifest = json.loads((info.run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    return manifest.get("config_changes") or []


@trackers.register("wandb", record_file=RECORD)  # hosted.lagging() reads it
def wandb(
    *,
    project: str | None = None,
    entity: str | None = None,
    mode: Literal["offline", "online"] | None = None,
    group: str | None = None,
) -> Tracker:
    """Weights & Biases: config, every figure by step, system metrics, one run across resumes; offline by default.

    Args:
        project: W&B project; default the config's name.
        entity: W&B team or user; default W&B's own default.
        mode: offline (upload later with `wandb sync`) or online; default WANDB_MODE, else offline.
        group: W&B group of runs (`mlrun tune` groups its trials under the study's name).
    """
    require("wandb", "wandb")
    return WandbTracker(project, entity, mode, group)
