"""`data`: the dataset, its loaders (batch size, workers, shuffling) and the augmentations applied to
training batches.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, NonNegativeInt, PositiveInt

from mlrun.config.schema.base import ComponentSpec, Seed


def _batch_size(value: Any) -> Any:
    """A positive integer or 'auto', with one message for anything else."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError("Input should be greater than 0 (or 'auto' for the largest batch that fits)")
    raise ValueError("expected a positive integer or 'auto'")


class AugmentSpec(ComponentSpec):
    registry_kind = "augmentations"


class DataSpec(ComponentSpec):
    """The dataset (`name` + its settings, e.g. `val_fraction`) and how it is batched."""

    registry_kind = "datasets"

    batch_size: Annotated[PositiveInt | Literal["auto"], BeforeValidator(_batch_size)] = 64
    """Samples per training micro-batch, per process; auto: the largest that fits (train.memory_budget_gb)."""
    eval_batch_size: PositiveInt | None = None
    """Samples per evaluation batch; default: 4x batch_size."""
    num_workers: NonNegativeInt | Literal["auto"] = 0
    """Loader worker processes; 0 loads in the training process; auto: 0 for in-memory data, else spare cores."""
    persistent_workers: bool = True
    """Keep worker processes alive between epochs (with num_workers > 0)."""
    prefetch_factor: PositiveInt | None = None
    """Batches each worker loads ahead (with num_workers > 0); default 2."""
    seed: Seed | None = None
    """The seed the dataset gets (its train/validation split, a synthetic set's draws); default the run's `seed`.
    Fix it to vary a run's initialisation and batch order over `seed` on one split (seed studies, ensembles)."""
    shuffle: bool = True
    """Shuffle the training split every epoch (seeded by `seed` and the epoch)."""
    drop_last: bool = False
    """Drop the end of each epoch that does not fill a whole global batch (batch_size x processes x
    train.grad_accum_steps samples): every optimizer step then sees as many samples, and a resume on another
    number of processes keeps the run's length."""
    pin_memory: bool | None = None
    """Page-locked host memory for faster copies to a GPU; default: on when training on CUDA."""
    augment: list[AugmentSpec] = []
    """Augmentation steps applied in order to training batches only, e.g. [hflip, {name: random_crop, padding: 4}]."""
    augment_field: str | None = None
    """For batches of named tensors: the image field augmentation applies to (targets: `labels`)."""
    dedup: bool = False
    """Drop exact duplicate samples within each split and report samples shared by train and validation (leakage)."""

    def seed_for(self, run_seed: int) -> int:
        """The seed the dataset is built and split with: `seed` here, else the run's."""
        return run_seed if self.seed is None else self.seed
