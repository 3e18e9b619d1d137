"""`mlrun validate CONFIG [k=v ...] [--print]`: load, validate and build every component, then one forward
and backward pass on one real batch (no optimizer step, no files written), so parts that do not fit
each other fail here with exit 2."""

from __future__ import annotations

from pathlib import Path

import yaml

from mlrun.config.load import load_config


def run_validate(path: Path, overrides: list[str], print_config: bool) -> None:
    config = load_config(path, overrides)
    if print_config:
        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    import torch

    from mlrun.engine.autobatch import resolve_batch_size
    from mlrun.engine.build import build_components
    from mlrun.engine.preflight import check_one_batch

    parts = build_components(resolve_batch_size(config))
    check_one_batch(parts, torch.device("cpu"))
    params = sum(p.numel() for p in parts.model.parameters())
    print(
        f"mlrun: {path} is valid: model {config.model.name} ({params:,} parameters), "
        f"data {config.data.name} ({len(parts.bundle.train)} train / {len(parts.bundle.val)} val samples), "
        f"{parts.plan.steps_per_epoch} steps/epoch, {parts.plan.total_steps} optimizer steps; "
        "one batch ran forward and backward"
    )
    if print_config:
        print_param_groups(parts)


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
