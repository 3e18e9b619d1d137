"""`mlrun validate CONFIG [k=v ...] [--print]`: load, validate and build every component, then one forward
and backward pass on one real batch (no optimizer step, no files written), so parts that do not fit
each other fail here with exit 2. A config with `compress:` stages has them applied once, without
fine-tuning, to the trained run's final weights or, before training, to the model as built here: a
stage that cannot apply (a teacher run that is missing or does not fit, a layer pattern that names
nothing) fails now rather than after the training."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import yaml

from mlrun.config.load import load_config
from mlrun.config.schema import ExperimentConfig


def run_validate(path: Path, overrides: list[str], print_config: bool) -> None:
    config = load_config(path, overrides)
    if not print_config:
        return check_config(path, config, print_config)
    # stdout holds the resolved config alone (`mlrun validate c.yaml --print > resolved.yaml` is a config).
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="", flush=True)
    with contextlib.redirect_stdout(sys.stderr):
        check_config(path, config, print_config)


def check_config(path: Path, config: ExperimentConfig, print_config: bool) -> None:
    """Build everything, run one batch, apply the compress stages; say so (and the optimizer's groups)."""
    import torch

    from mlrun.engine.run import check_device_settings

    check_device_settings(config)  # what train refuses before building anything

    from mlrun.engine.autobatch import resolve_batch_size
    from mlrun.engine.build import build_components
    from mlrun.engine.preflight import check_components, check_one_batch

    parts = build_components(resolve_batch_size(config))
    check_components(parts, config.data.batch_size == "auto", "cpu")  # train's refusals (a single class) and warnings
    check_one_batch(parts, torch.device("cpu"))
    params = sum(p.numel() for p in parts.model.parameters())
    stages = check_compress_stages(config, parts) if any(spec.enabled for spec in config.compress) else None
    print(
        f"mlrun: {path} is valid: model {config.model.name} ({params:,} parameters), "
        f"data {config.data.name} ({len(parts.bundle.train)} train / {len(parts.bundle.val)} val samples), "
        f"{parts.plan.steps_per_epoch} steps/epoch, {parts.plan.total_steps} optimizer steps; "
        "one batch ran forward and backward"
    )
    if stages:
        print(stages)
    if print_config:
        print_param_groups(parts)


def check_compress_stages(config: ExperimentConfig, parts) -> str:
    """Apply the config's compress stages as `mlrun compress` does before its first stage. Before the run
    is trained, the stages apply to this model as built, saved as a stand-in run in a temporary folder
    (a distill stage's default teacher included); pruning by magnitude may choose other weights once
    trained, so `mlrun compress` checks again."""
    import tempfile

    from mlrun.compression.run import checked_chain

    run_dir = Path(config.output_dir) / config.name
    if (run_dir / "model.safetensors").is_file():
        specs, _, _ = checked_chain(config.compress, run_dir)
        return f"compress: {len(specs)} stage(s) apply to the trained run {run_dir} (checked without fine-tuning)"
    with tempfile.TemporaryDirectory(prefix="mlrun-validate-") as folder:
        specs, _, _ = checked_chain(config.compress, stand_in_run(parts, Path(folder) / config.name))
    return (
        f"compress: {len(specs)} stage(s) apply to this model as built (checked without fine-tuning; "
        f"{run_dir} is not trained yet, and mlrun compress checks them again on its weights)"
    )


def stand_in_run(parts, run_dir: Path) -> Path:
    """A run folder holding the built model's weights, config and fitted preprocessing, as training writes them."""
    from mlrun.engine.run_dir import write_config, write_fitted_transform
    from mlrun.models.weights_file import save_weights

    run_dir.mkdir(parents=True)
    write_config(run_dir, parts.config.model_dump(mode="json"))
    save_weights(parts.model, run_dir / "model.safetensors")
    write_fitted_transform(run_dir, parts.bundle.transform)
    return run_dir


def print_param_groups(parts) -> None:
    """The optimizer's groups: what trains at which peak lr and weight decay."""
    from mlrun.optim.param_groups import describe_groups

    rows = describe_groups(parts.optimizer, parts.schedule.base_lrs)
    trainable = sum(row.parameters for row in rows)
    in_model = {id(p): p.numel() for p in parts.model.parameters()}
    # Parameters an objective trains beside the model (distill's projections) count in both figures.
    beside = sum(p.numel() for g in parts.optimizer.param_groups for p in g["params"] if id(p) not in in_model)
    total = sum(in_model.values()) + beside
    outside = f", {beside:,} of them beside the model" if beside else ""
    print(f"optimizer groups ({trainable:,} of {total:,} parameters train{outside}):")
    print(f"  {'group':<40} {'tensors':>7} {'parameters':>11} {'peak lr':>10} {'weight decay':>12}")
    for row in rows:
        print(f"  {row.name:<40} {row.tensors:>7} {row.parameters:>11,} {row.lr:>10.3g} {row.weight_decay:>12.3g}")
