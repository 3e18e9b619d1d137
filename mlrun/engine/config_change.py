"""Resuming with a config that differs from the run's own: show the difference, refuse unless told.

    mlrun train c.yaml optimizer.lr=1e-3                          # exit 2: shows what changed
    mlrun train c.yaml optimizer.lr=1e-3 --allow-config-change    # continues, recorded in manifest.json

A run directory's config.yaml must keep reproducing the run, so a change taken on resume is never
silent: `--allow-config-change` (or an explicit `--resume PATH`, which asks for it by name) accepts
it, and manifest.json records each accepted change with the step it took effect at.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mlrun.config.paths import resolve_local_paths
from mlrun.config.schema import ExperimentConfig
from mlrun.errors import UsageError

Changes = dict[str, tuple[Any, Any]]  # dotted key -> (old, new)
# Keys that say how a job is operated, not what it trains: they may change on resume without
# --allow-config-change (still shown and recorded). scripts/slurm/train.sbatch sets requeue_on_signal,
# and resuming that run by hand without it must not be refused.
OPERATIONAL = frozenset({"train.requeue_on_signal"})
_MISFIT = ("size mismatch", "Missing key", "Unexpected key")


def diff_configs(old: Any, new: Any, prefix: str = "") -> Changes:
    """Changed keys, dotted; a section that appears or disappears (a mapping vs null) is one change."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: Changes = {}
        for key in [*old, *(k for k in new if k not in old)]:
            changes.update(diff_configs(old.get(key), new.get(key), f"{prefix}{key}."))
        return changes
    return {} if old == new else {prefix.rstrip("."): (old, new)}


def describe(changes: Changes) -> str:
    return "\n".join(f"  {key}: {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items())


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


def stored_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def keep_batch_size(config: ExperimentConfig, stored: dict[str, Any]) -> ExperimentConfig:
    """`data.batch_size: auto` on resume is the number the run started with: its data position counts in those."""
    from mlrun.engine.autobatch import with_batch_size

    old = (stored.get("data") or {}).get("batch_size")
    if config.data.batch_size == "auto" and isinstance(old, int):
        return with_batch_size(config, old)
    return config


def check_resume_config(
    run_dir: Path, config: ExperimentConfig, checkpoint: Path, allowed: bool
) -> tuple[ExperimentConfig, Changes]:
    """The config to resume with and its changes against the run's config.yaml; exit 2 if not allowed."""
    stored = stored_config(run_dir)
    if stored is None:
        return config, {}
    config = keep_batch_size(config, stored)
    # A run recorded before paths were stored absolute compares by the same resolution.
    changes = diff_configs(resolve_local_paths(stored), config.model_dump(mode="json"))
    refused = {key: change for key, change in changes.items() if key not in OPERATIONAL}
    if refused and not allowed:
        hint = ""
        if any(key.startswith("model.") for key in refused):
            hint = (
                "\nA change of model settings that changes the weights' shapes cannot apply to a resumed run; "
                "start a new run (another name=..., with init_from to start from these weights)."
            )
        raise UsageError(
            f"run '{run_dir}' would resume from {checkpoint.name} with a changed config:\n{describe(refused)}\n"
            "Its config.yaml would then no longer reproduce the run. Pass --allow-config-change to continue "
            "with the change (recorded in manifest.json), --overwrite to start over, or another name=..." + hint
        )
    if "optimizer.name" in changes:
        old, new = changes["optimizer.name"]
        raise UsageError(
            f"optimizer.name: {old} -> {new} cannot apply to a resumed run: the checkpoint holds {old}'s state "
            "(moments, step counts) for every parameter. Start a new run (another name=..., with init_from "
            "to start from these weights)."
        )
    return config, changes


def check_resume_data(run_dir: Path, prints: dict[str, str | None], allowed: bool) -> Changes:
    """The data's fingerprint against the one the run recorded (manifest.json) when resuming; exit 2 if it
    changed and that is not allowed. The same config can read other data (a glob that now matches another
    shard, files rewritten in place): the epoch length and split would change under the checkpoint's
    position, so this is a change of the run like a changed key, refused or accepted and recorded alike."""
    from mlrun.data.bundle import FINGERPRINT_VERSION

    manifest = run_dir / "manifest.json"
    info = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if info.get("data_fingerprint_version") != FINGERPRINT_VERSION:  # a run recorded before: nothing to compare
        return {}
    recorded = info.get("data_fingerprint") or {}
    changes = {
        f"data_fingerprint.{split}": (recorded[split], new)
        for split, new in prints.items()
        if recorded.get(split) and new and recorded[split] != new  # None: a dataset that cannot say
    }
    if changes and not allowed:
        raise UsageError(
            f"run '{run_dir}' would resume on other data than it trained on (the same config now reads other "
            f"samples: files added to a glob, changed or removed):\n{describe(changes)}\nThe epoch length, the "
            "split and the checkpoint's position in the epoch would no longer match. Restore the data, pass "
            "--allow-config-change to continue on the new data (recorded in manifest.json), --overwrite to "
            "start over, or another name=..."
        )
    return changes


def explain_load_failure(checkpoint: Path, exc: BaseException, changes: Changes) -> UsageError:
    """A checkpoint that will not load, with its real cause and the changed keys that explain it."""
    # Imported here: checkpoint.py imports Accelerate, which the tuning guard's use of this module needs not.
    from mlrun.engine.checkpoint import older_whole_checkpoint, read_error, unreadable_file

    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # torch's load_state_dict puts the telling line ("size mismatch for net.0.weight: ...") second.
    telling = next((line for line in lines if any(m in line for m in _MISFIT)), lines[0] if lines else "")
    if "weights_only" in telling:  # never relay torch's advice to unpickle a damaged file in full
        telling = read_error(exc)
    cause = f"{type(exc).__name__}: {telling}".rstrip(":. ")
    old, new = changes.get("distributed.strategy", ("auto", "auto"))
    model_keys = [key for key in changes if key.startswith("model.")]
    if {old, new} - {"auto", "ddp"} and not model_keys:  # each strategy lays its checkpoint out its own way
        return UsageError(
            f"cannot resume from {checkpoint}: {cause}. It was written under distributed.strategy: {old}, which "
            f"{new} cannot read: resume with distributed.strategy={old}, or start a new run from its weights "
            "(init_from)."
        )
    if any(marker in text for marker in _MISFIT):
        named = f" (changed: {', '.join(model_keys)})" if model_keys else ""
        return UsageError(
            f"cannot resume from {checkpoint}: its weights do not fit the model of this config{named}: {cause}. "
            "A model of another shape needs a new run (another name=..., init_from to start from these weights)."
        )
    older = older_whole_checkpoint(checkpoint)
    back = f"resume from the one before it with --resume {older}" if older else "pass an older one with --resume PATH"
    damaged = unreadable_file(checkpoint)  # torch's error names no file
    if damaged:
        return UsageError(f"cannot resume from {checkpoint}: {damaged}; {back}, or --overwrite to start over.")
    changed = f" The config changed in: {', '.join(changes)}." if changes else ""
    return UsageError(
        f"cannot resume from {checkpoint}: {cause}.{changed} To go on, {back}, or --overwrite to start over."
    )


def record_changes(manifest: dict[str, Any], previous: dict[str, Any] | None, step: int, changes: Changes) -> None:
    """Carry the run's history of accepted changes into the new manifest, with this one appended."""
    history = list((previous or {}).get("config_changes", []))
    if changes:
        history.append({"step": step, "changes": {key: [old, new] for key, (old, new) in changes.items()}})
    manifest["config_changes"] = history
