"""Config -> components: data, model, loss, metrics, optimizer, schedule, techniques, trackers.

Each builder receives only its own section; runtime inputs (the data's metadata, the model's
parameters, the number of steps) are passed in, never read from a global config.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from mlrun.callbacks import Callback
from mlrun.config.schema import ComponentSpec, DataSpec, ExperimentConfig, TrainConfig
from mlrun.data.augment import Augmentations
from mlrun.data.bundle import DataMeta, DatasetBundle, example_features
from mlrun.engine.batches import batches_per_epoch
from mlrun.errors import UsageError
from mlrun.metrics import Metric
from mlrun.models.structure import add_structure, adds_layers
from mlrun.objectives.base import ObjectiveWithParameters
from mlrun.optim.param_groups import regroup
from mlrun.optim.schedulers import LRSchedule
from mlrun.registry import REGISTRIES, schedulers, trackers
from mlrun.tracking.base import Tracker


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps an epoch and the whole run take."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    processes: int = 1  # training processes (DDP, FSDP): a technique may work on one only


@dataclass
class Components:
    config: ExperimentConfig
    bundle: DatasetBundle
    model: nn.Module
    loss_fn: object
    objective: object  # (model, batch) -> ObjectiveOutput
    metrics: list[Metric]
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    callbacks: list[Callback]
    trackers: list[Tracker]
    plan: StepPlan
    augment: Augmentations | None = None
    init_report: dict | None = None  # what init_from loaded (None without init_from, or when not applied)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(spec: ComponentSpec, *runtime, returns: type | None = None):
    """Call a component's factory; a ValueError from its own checks becomes a usage error, and the user's
    own factory returning something other than `returns` exits 2 naming it."""
    registry = REGISTRIES[spec.registry_kind]
    try:
        built = registry.build(spec.name, *runtime, **spec.settings)
    except (ValueError, ValidationError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"{registry.one} '{spec.name}': {exc}") from None
    if returns is not None and not isinstance(built, returns):
        raise UsageError(
            f"{registry.one} '{spec.name}' returned {type(built).__name__}, not a "
            f"{returns.__module__}.{returns.__qualname__}; return one from the factory"
        )
    return built


def build_components(
    config: ExperimentConfig,
    num_processes: int = 1,
    fitted_transform=None,
    init_weights: bool = True,
    bundle: DatasetBundle | None = None,
    train_samples: int | None = None,
) -> Components:
    """Every component of a resolved config (`data.batch_size: auto` already a number: mlrun.engine.autobatch).

    `fitted_transform`: the run's own fitted preprocessing (eval, export, resume), applied instead of
    fitting anew by sources that fit one (tabular). `init_weights`: a fresh start, which loads init_from and
    enforces every check; False for a resume, eval and export of a recorded run. `bundle`: data already
    built (engine/restore.py), by default config.data's; `train_samples`: the training split it stands for,
    when it holds only a run's recorded examples (engine/example_inputs.py), so steps are planned as trained.
    """
    if config.data.batch_size == "auto":
        raise ValueError("build_components needs a resolved batch size: call engine.autobatch.resolve_batch_size first")
    seed_everything(config.seed)
    if bundle is None:
        bundle = build_data(config.data, config.seed, fitted_transform)
    plan = plan_steps(train_samples or len(bundle.train), config.data, config.train, num_processes)
    model = build(config.model, bundle.meta, returns=nn.Module)
    check_technique_order(config)
    check_technique_plans(config, plan)  # before reading pretrained weights: a bad setting fails fast
    # The whole structure before weights are loaded into it: a compressed model's edits (pruned shapes,
    # factorized layers) and the layers techniques add (early-exit heads, which init_from then fills).
    structure = add_structure(model, config, build)
    init_report = None
    if config.init_from is not None and init_weights:
        from mlrun.engine.init_from import load_pretrained

        # Before the other techniques (LoRA renames keys, freeze reads names) and before the optimizer.
        init_report = load_pretrained(model, config.init_from)
    others = [build(spec, model) for spec in config.techniques if not adds_layers(spec.name)]
    callbacks = [callback for callback in (*structure, *others) if callback is not None]
    loss_fn = build(config.loss, bundle.meta)
    check_objective_uses_loss(config)
    check_technique_objectives(config)
    objective = build(config.objective, loss_fn, bundle.meta)
    if isinstance(objective, ObjectiveWithParameters):  # trained beside the model: optimizer and checkpoints
        check_objective_parameters_fit(config)
        objective.attach(model, example_features(bundle.train))
        callbacks.append(objective)
    optimizer = build(config.optimizer, model)
    regroup(optimizer, model, config.optimizer, refuse_dead_rules=init_weights)  # param_groups rules, layer_decay
    for callback in callbacks:
        optimizer = callback.wrap_optimizer(optimizer)
    check_in_backward(config)
    warmup = config.scheduler.warmup_steps or round(config.scheduler.warmup_ratio * plan.total_steps)
    curve = build(config.scheduler, plan.total_steps, warmup)
    schedule = LRSchedule(optimizer, curve, warmup, config.scheduler.warmup_start_factor)
    metric_objects = [build(spec, bundle.meta) for spec in config.metrics]
    check_metric_names(config, metric_objects)
    check_monitors(config, metric_objects)
    augment = build_augmentations(config, bundle.meta)
    return Components(
        config=config,
        bundle=bundle,
        model=model,
        loss_fn=loss_fn,
        objective=objective,
        metrics=metric_objects,
        optimizer=optimizer,
        schedule=schedule,
        callbacks=callbacks,
        trackers=build_trackers(config),
        plan=plan,
        augment=augment,
        init_report=init_report,
    )


def check_in_backward(config: ExperimentConfig) -> None:
    """A technique that steps the optimizer inside backward (trait `steps_in_backward`) cannot accumulate or clip."""
    from mlrun.registry import techniques

    for spec in config.techniques:
        if techniques.trait(spec.name, "steps_in_backward", False) and (
            config.train.grad_accum_steps > 1 or config.train.max_grad_norm
        ):
            raise UsageError(
                f"techniques: {spec.name} steps each parameter as soon as its gradient is "
                "ready, so it cannot accumulate or clip: set train.grad_accum_steps: 1 and "
                "train.max_grad_norm: null"
            )


def check_technique_plans(config: ExperimentConfig, plan: StepPlan) -> None:
    """A technique that depends on the run's length or setup (trait `check_plan`, e.g. lp_ft's probe) checks it."""
    from mlrun.registry import techniques

    for spec in config.techniques:
        if check := techniques.trait(spec.name, "check_plan"):
            check(config, plan, **spec.settings)


def check_technique_order(config: ExperimentConfig) -> None:
    """A technique that chooses which parameters train (trait `chooses_trainable`: freeze, lp_ft) listed before
    one that freezes all but its own (trait `freezes_the_rest`: lora) is undone by it: LoRA re-opens its
    `trainable` patterns whatever freeze chose, and a release later in the run (unfreeze_every, lp_ft's
    probe) would train the base weights LoRA froze. Techniques apply in list order, so the fix is the order."""
    from mlrun.registry import techniques

    names = [spec.name for spec in config.techniques]
    for later, name in enumerate(names):
        if not techniques.trait(name, "freezes_the_rest", False):
            continue
        earlier = [n for n in names[:later] if techniques.trait(n, "chooses_trainable", False)]
        if earlier:
            raise UsageError(
                f"techniques: {earlier[0]} is listed before {name}, which freezes every parameter but its own and "
                f"would undo {earlier[0]}'s choice (or have it release weights {name} froze); list {name} first, "
                f"so {earlier[0]} acts on {name}'s trainable parameters"
            )


def check_objective_uses_loss(config: ExperimentConfig) -> None:
    from mlrun.config.schema import LossSpec
    from mlrun.registry import objectives

    if not objectives.trait(config.objective.name, "uses_loss", True) and config.loss != LossSpec(name="cross_entropy"):
        raise UsageError(
            f"loss: objective '{config.objective.name}' uses the loss the model returns, so loss "
            f"'{config.loss.name}' would be ignored; remove `loss:` or use objective: supervised"
        )


def check_objective_parameters_fit(config: ExperimentConfig) -> None:
    """An objective's own parameters join the optimizer and checkpoint of one process, DDP or FSDP (whole
    on every process beside the sharded model; mlrun.engine.dcp_state); DeepSpeed's engine and the
    pipeline's per-stage optimizers hold the model's only, a technique stepping in backward hooks the
    model's parameters only, and FSDP's CPU offload would keep the model's state on the CPU while the
    objective's parameters (placed beside the model's first parameter) train elsewhere."""
    from mlrun.registry import techniques

    distributed = config.distributed
    blockers = []
    if distributed.strategy in ("deepspeed", "pipeline"):
        blockers.append((f"distributed.strategy: {distributed.strategy}", "use strategy ddp, fsdp or auto"))
    if distributed.strategy == "fsdp" and distributed.fsdp_cpu_offload:
        blockers.append(("distributed.fsdp_cpu_offload", "set it to false"))
    blockers += [
        (f"techniques: {spec.name}", f"remove {spec.name}")
        for spec in config.techniques
        if techniques.trait(spec.name, "steps_in_backward", False)
    ]
    if blockers:
        blocker, fix = blockers[0]
        raise UsageError(
            f"objective {config.objective.name}: its settings train parameters beside the model's (distill's "
            f"projection), which {blocker} cannot train with it; {fix}, or drop those settings"
        )


def check_technique_objectives(config: ExperimentConfig) -> None:
    """A technique that trains through its own objective (early_exit) needs that objective."""
    from mlrun.registry import techniques

    for spec in config.techniques:
        wanted = techniques.trait(spec.name, "objective")
        if wanted and config.objective.name != wanted:
            raise UsageError(
                f"techniques: {spec.name} is trained by objective '{wanted}' (objective '{config.objective.name}' "
                f"would leave it untrained); set objective: {wanted}"
            )


def build_data(spec: DataSpec, run_seed: int, fitted_transform=None) -> DatasetBundle:
    """The dataset of `spec`, split by `data.seed` (default the run's seed)."""
    from mlrun.registry import datasets

    seed = spec.seed_for(run_seed)
    classes = spec.settings.get("classes")
    if isinstance(classes, list) and len({str(c) for c in classes}) != len(classes):
        raise UsageError(f"data.classes: {classes} names a class twice; list each class once")
    # Only sources that fit preprocessing (their registry entry says so) take the run's fitted one.
    takes_fitted = datasets.trait(spec.name, "fits_transform", False)
    runtime = (seed, fitted_transform) if takes_fitted else (seed,)
    bundle = build(spec, *runtime, returns=DatasetBundle)
    if spec.dedup:
        from mlrun.data.dedup import deduplicate, describe

        bundle = deduplicate(bundle, spec.name)
        print(f"mlrun: data: {describe(bundle.cleaning)}", flush=True)
    for split in ("train", "val"):
        if len(getattr(bundle, split)) == 0:
            raise UsageError(f"data: dataset '{spec.name}' has an empty {split} split; adjust val_fraction or the data")
    return bundle


def build_augmentations(config: ExperimentConfig, meta: DataMeta) -> Augmentations | None:
    if not config.data.augment:
        return None
    from mlrun.registry import losses

    steps = [build(spec, meta) for spec in config.data.augment]
    if meta.input_names is not None and config.data.augment_field not in meta.input_names:
        raise UsageError(
            f"data.augment_field: batches of '{config.data.name}' are named tensors "
            f"({', '.join(meta.input_names)}); name the image field augmentation applies to"
        )
    augment = Augmentations(steps, config.seed, config.data.augment_field)
    # The user's own loss is trusted to take what it is given.
    takes_soft = losses.trait(config.loss.name, "soft_labels", ":" in config.loss.name)
    if augment.soft_labels and meta.task == "classification" and not takes_soft:
        soft = [name for name in losses.names() if losses.trait(name, "soft_labels", False)]
        raise UsageError(
            f"data.augment: mixup and cutmix give class probabilities as targets, which loss "
            f"'{config.loss.name}' cannot take; use {' or '.join(soft)}."
        )
    return augment


def plan_steps(train_size: int, data: DataSpec, train: TrainConfig, num_processes: int = 1) -> StepPlan:
    """Batches and optimizer steps per epoch as each process sees them (batches are dealt round-robin)."""
    # This process's share of what the sampler deals (mlrun.engine.batches): the same count, by construction.
    everyone = batches_per_epoch(train_size, data.batch_size, data.drop_last, num_processes, train.grad_accum_steps)
    batches = everyone // num_processes
    if batches == 0:
        raise UsageError(
            f"data.batch_size: {data.batch_size} x {num_processes} process(es) x train.grad_accum_steps "
            f"{train.grad_accum_steps} is larger than the {train_size} training samples with drop_last; lower one"
        )
    steps_per_epoch = math.ceil(batches / train.grad_accum_steps)
    candidates = [n for n in (train.max_steps, train.epochs and train.epochs * steps_per_epoch) if n]
    return StepPlan(batches, steps_per_epoch, min(candidates), num_processes)


def build_trackers(config: ExperimentConfig) -> list[Tracker]:
    specs = list(config.tracking)
    if not any(spec.name == "jsonl" for spec in specs):
        specs.append(ComponentSpec.model_construct(name="jsonl"))  # metrics.jsonl is always written
    return [trackers.build(spec.name, **spec.settings) for spec in specs]


def check_metric_names(config: ExperimentConfig, metric_objects: list[Metric]) -> None:
    """Each metric logs its own figure: two under one name would keep only the last one's value."""
    by_name: dict[str, list[str]] = {}
    for spec, metric in zip(config.metrics, metric_objects):
        by_name.setdefault(metric.name, []).append(spec.name)
    for name, specs in by_name.items():
        if len(specs) > 1:
            raise UsageError(
                f"metrics: {' and '.join(repr(s) for s in specs)} both log val/{name}; list each metric once, "
                "or give your own metric another name (its `name` attribute)"
            )


def check_monitors(config: ExperimentConfig, metric_objects: list[Metric]) -> None:
    """Every monitored figure must be one the run logs."""
    logged = {"val/loss", "train/loss", *(f"val/{m.name}" for m in metric_objects)}
    train = config.train
    watched = {
        "train.early_stopping.monitor": train.early_stopping.monitor if train.early_stopping else None,
        "train.best.monitor": train.best.monitor if train.best else None,
    }
    if watches := schedulers.trait(config.scheduler.name, "watches"):  # e.g. plateau's monitor
        setting, default = watches
        watched[f"scheduler.{setting}"] = config.scheduler.settings.get(setting, default)
    for key, monitor in watched.items():
        if monitor is not None and monitor not in logged:
            raise UsageError(
                f"{key}: '{monitor}' is not logged by this run. Logged: {', '.join(sorted(logged))} "
                "(add the metric to `metrics:`)"
            )
