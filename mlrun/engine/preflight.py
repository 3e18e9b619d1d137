"""Checks before anything trains: each says what to change, with a warning or exit 2.

- `check_components`: settings valid one by one but wrong together (the plan of steps, the data,
  the schedule); `mlrun train` checks them after building and before anything is written.
- The dry run (`check_one_batch`, `check_prepared_batch`): one forward and backward pass on one real
  training batch, run by `mlrun validate` and by `mlrun train` before step 1, so a model, data,
  objective, loss or metric that do not fit each other stop with one message naming the parts and
  what would fit, instead of a raw torch error at step 0. Nothing is kept: the pass runs in eval
  mode, takes no optimizer step, accumulates no gradient, and restores buffers and every RNG: a run's
  numbers are the same. It is a probe rather than the training step for that reason.
"""

from __future__ import annotations

import contextlib
import sys

import torch

from mlrun.data.batch import move_batch, split_batch
from mlrun.data.bundle import fetch_batch
from mlrun.engine.build import Components
from mlrun.engine.compile import eager
from mlrun.errors import UsageError
from mlrun.models.outputs import call_model, logits_of
from mlrun.registry import losses, metrics

DRY_RUN_SAMPLES = 4
# data.batch_size: auto on CPU: fewer optimizer steps an epoch than this is too few to learn from.
MIN_AUTO_STEPS_PER_EPOCH = 8


def check_prepared_batch(parts: Components, accelerator) -> None:
    """The dry run as `mlrun train` runs it: on the prepared model, on its device, under its autocast.

    Skipped where no plain forward exists: a model sharded by FSDP2 or DeepSpeed.
    """
    import torch.distributed as dist

    sharded = parts.config.distributed.strategy == "fsdp" and dist.is_initialized()
    if not sharded and accelerator.distributed_type.value != "DEEPSPEED":
        check_one_batch(parts, accelerator.device, accelerator.autocast)


def check_one_batch(parts: Components, device: torch.device, autocast=contextlib.nullcontext) -> None:
    """Raise UsageError (exit 2) when the parts do not fit; `autocast`: the run's mixed-precision context."""
    check_metrics_fit_task(parts)
    model, train = parts.model, parts.bundle.train
    # A few samples show every shape mismatch a whole batch would, at a fraction of its memory.
    batch = move_batch(
        fetch_batch(train, range(min(DRY_RUN_SAMPLES, parts.config.data.batch_size, len(train)))), device
    )
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = [device] if device.type == "cuda" else []
    was_training = model.training
    # Eval mode: shapes are the same, and it draws no dropout mask, moves no batch-norm statistic and
    # is not a "training forward" to models that count them.
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), eager():  # a compiled model: no compile for 4 samples
            with autocast():
                out = parts.objective(model, batch)
            if out.loss.ndim != 0:
                raise UsageError(f"{describe(parts)}: the loss has shape {tuple(out.loss.shape)}; it must be a scalar")
            # Gradients returned, not accumulated into .grad: hooks that act on accumulation (a step in
            # backward) stay silent, and nothing is left to clear.
            params = [p for p in model.parameters() if p.requires_grad]
            torch.autograd.grad(out.loss, params, allow_unused=True)
    except UsageError:
        raise
    except Exception as exc:  # any torch error: name the parts, then what the shapes say
        raise UsageError(f"{describe(parts)} do not fit on one training batch: {mismatch(parts, batch, exc)}") from None
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        model.train(was_training)
    check_loss_fits_task(parts, batch)  # what ran without an error may still mean nothing
    check_outputs_fit_classes(parts, out)


def check_outputs_fit_classes(parts: Components, out) -> None:
    """A class loss over more outputs than the data has classes trains without an error, and the model
    then gives probability to classes that do not exist (predict prints columns for them)."""
    loss, classes = parts.config.loss.name, parts.bundle.meta.num_classes
    if parts.config.objective.name != "supervised" or losses.trait(loss, "targets") != "classes" or not classes:
        return
    outputs = out.predictions.shape[-1]
    if out.targets is not None and not out.targets.is_floating_point() and outputs > classes:
        raise UsageError(
            f"{describe(parts)}: the model gives {outputs} outputs per sample, but the data has {classes} classes: "
            f"its output layer must be {classes} wide (a model factory receives the count as meta.num_classes)"
        )


def describe(parts: Components) -> str:
    c, meta = parts.config, parts.bundle.meta
    shape = f"inputs {', '.join(meta.input_names)}" if meta.input_names else f"samples of shape {meta.input_shape}"
    classes = f", {meta.num_classes} classes" if meta.num_classes else ""
    return (
        f"model '{c.model.name}', data '{c.data.name}' ({meta.task}, {shape}{classes}), "
        f"objective '{c.objective.name}' and loss '{c.loss.name}'"
    )


def check_metrics_fit_task(parts: Components) -> None:
    """A metric must score the data's kind of task (accuracy on regression targets runs, and means nothing)."""
    task = parts.bundle.meta.task
    for spec in parts.config.metrics:
        tasks = metrics.trait(spec.name, "tasks")
        if tasks is not None and task not in tasks:
            fitting = [name for name in metrics.names() if task in (metrics.trait(name, "tasks") or ())]
            raise UsageError(
                f"metrics: '{spec.name}' scores {' or '.join(tasks)} tasks, but data '{parts.config.data.name}' is a "
                f"{task} task; use {', '.join(fitting)}"
                + (
                    " (float labels make a regression task: set data.task: classification)"
                    if task == "regression"
                    else ""
                )
            )


def check_loss_fits_task(parts: Components, batch) -> None:
    """A class loss on regression targets can run and learn nothing: cross_entropy reads float targets
    as class probabilities, and over one output its softmax is 1, so the loss is 0 whatever the model
    does. Only targets that are probability rows over several outputs are left to it."""
    loss, meta = parts.config.loss.name, parts.bundle.meta
    if meta.task != "regression" or parts.config.objective.name != "supervised":
        return
    if losses.trait(loss, "targets") != "classes":
        return
    targets = split_batch(batch)[1]
    if targets is None or not targets.is_floating_point():
        return
    rows = targets.reshape(len(targets), -1).float()
    if rows.shape[1] > 1 and bool((rows >= 0).all()) and torch.allclose(rows.sum(1), torch.ones(len(rows))):
        return
    raise UsageError(
        f"loss '{loss}' scores classes, but data '{parts.config.data.name}' is a regression task (float targets, "
        f"{meta.output_dim or 1} value(s) per sample): use a regression loss (mse, l1, huber), or, if the labels "
        "are classes, set data.task: classification"
    )


def mismatch(parts: Components, batch, exc: Exception) -> str:
    """The torch error, explained by the shapes of the model's outputs and the targets when they say more."""
    error = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    features, targets = split_batch(batch)
    try:
        with torch.no_grad():
            logits = logits_of(call_model(parts.model, features))
    except Exception:  # noqa: BLE001 - the model itself cannot take the batch
        names = ", ".join(features) if isinstance(features, dict) else f"a tensor of shape {tuple(features.shape)}"
        return f"the model cannot take the batch ({names}): {error}"
    if targets is None or parts.config.objective.name != "supervised":
        return error
    hint = loss_hint(parts.config.loss.name, logits, targets, parts.bundle.meta.num_classes)
    return f"{error.rstrip('.')}. {hint}" if hint else error


def loss_hint(loss: str, logits: torch.Tensor, targets: torch.Tensor, classes: int | None = None) -> str | None:
    kind = losses.trait(loss, "targets")
    outputs, shape = logits.shape[-1], tuple(targets.shape)
    if kind == "classes" and classes and outputs < classes and not targets.is_floating_point():
        return (
            f"the model gives {outputs} outputs per sample, but the data has {classes} classes: its output layer "
            f"must be {classes} wide (a model factory receives the count as meta.num_classes; do not fix it in code)"
        )
    if kind == "classes" and targets.is_floating_point() and targets.ndim < logits.ndim:
        return (
            f"loss '{loss}' needs class ids (integers) or class probabilities, but the targets are floats of shape "
            f"{shape}: labels stored as floats (0.0/1.0) make a regression task. Set data.task: classification, "
            "or use a regression loss (mse, l1, huber)"
        )
    if kind == "binary" and not targets.is_floating_point() and outputs > 1 and targets.ndim < logits.ndim:
        return (
            f"loss '{loss}' scores one output per label, but the model gives {outputs} outputs per sample and the "
            f"targets are class ids: for {outputs} classes use loss: cross_entropy"
        )
    if kind == "values" and not targets.is_floating_point():
        return f"loss '{loss}' is for regression, but the targets are class ids: use loss: cross_entropy"
    return None


# --- settings wrong together ----------------------------------------------------------------


def warn(message: str) -> None:
    print(f"mlrun: warning: {message}", file=sys.stderr, flush=True)


def check_components(parts, batch_was_auto: bool, device_type: str) -> None:
    """Warn about (or refuse) combinations that would train silently badly."""
    config, plan, train = parts.config, parts.plan, parts.bundle.train
    check_one_class(parts)
    batch, samples = config.data.batch_size, len(train)
    fits = check_batch_fits(parts)  # a batch past the split is said once: the auto-batch note would repeat it
    if fits and batch_was_auto and device_type == "cpu" and plan.steps_per_epoch < MIN_AUTO_STEPS_PER_EPOCH:
        warn(
            f"data.batch_size: auto chose {batch} of {samples} training samples: {plan.steps_per_epoch} "
            f"optimizer step(s) an epoch, {plan.total_steps} in all, too few to learn well. On CPU a larger batch "
            "is not faster per sample; set data.batch_size to a number (e.g. 32-128)."
        )
    warmup = parts.schedule.warmup_steps
    if warmup >= plan.total_steps:
        warn(
            f"scheduler: the warm-up ({warmup} steps) is as long as or longer than the run ({plan.total_steps} "
            "optimizer steps): the learning rate never reaches optimizer.lr. Lower scheduler.warmup_steps "
            "(or use scheduler.warmup_ratio), or train longer."
        )


def check_batch_fits(parts) -> bool:
    """Warn when data.batch_size exceeds the training split (every batch is then the whole split); False if so.

    Also run by `mlrun profile`, whose figures would otherwise describe a batch that never exists.
    """
    batch, samples = parts.config.data.batch_size, len(parts.bundle.train)
    if batch <= samples:
        return True
    warn(
        f"data.batch_size: {batch} is larger than the {samples} training samples: each epoch is a single "
        f"batch of {samples} ({parts.plan.total_steps} optimizer steps in all). Lower data.batch_size."
    )
    return False


def check_one_class(parts) -> None:
    """A classifier trained on one class learns nothing: exit 2 naming the class."""
    meta, train = parts.bundle.meta, parts.bundle.train
    targets = getattr(train, "targets", None)
    if meta.task != "classification" or targets is None or not hasattr(targets, "unique"):
        return
    if targets.is_floating_point():  # class probabilities (soft labels): not countable here
        return
    classes = targets.unique()
    if len(classes) == 1:
        names = (parts.bundle.preprocessing or {}).get("classes") or []
        index = int(classes[0])
        name = names[index] if index < len(names) else index  # the class as the data names it, not its id
        raise UsageError(
            f"data: the training split of '{parts.config.data.name}' holds a single class "
            f"({name}) in all {len(train)} samples: nothing to learn. Check data.target, "
            "the file's rows, or data.val_fraction / data.val_path."
        )
