"""Settings that are valid one by one but wrong together, caught before training: a warning, or exit 2.

Each check looks at the built components (the plan of steps, the data, the schedule) and says what
to change. Checked by `mlrun train` after building and before anything is written.
"""

from __future__ import annotations

import sys

from mlrun.errors import UsageError

# data.batch_size: auto on CPU: fewer optimizer steps an epoch than this is too few to learn from.
MIN_AUTO_STEPS_PER_EPOCH = 8


def warn(message: str) -> None:
    print(f"mlrun: warning: {message}", file=sys.stderr, flush=True)


def check_components(parts, batch_was_auto: bool, device_type: str) -> None:
    """Warn about (or refuse) combinations that would train silently badly."""
    config, plan, train = parts.config, parts.plan, parts.bundle.train
    check_one_class(parts)
    batch, samples = config.data.batch_size, len(train)
    if batch > samples:
        warn(
            f"data.batch_size: {batch} is larger than the {samples} training samples: each epoch is a single "
            f"batch of {samples} ({plan.total_steps} optimizer steps in all). Lower data.batch_size."
        )
    elif batch_was_auto and device_type == "cpu" and plan.steps_per_epoch < MIN_AUTO_STEPS_PER_EPOCH:
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
        raise UsageError(
            f"data: the training split of '{parts.config.data.name}' holds a single class "
            f"({int(classes[0])}) in all {len(train)} samples: nothing to learn. Check data.target, "
            "the file's rows, or data.val_fraction / data.val_path."
        )
