"""What a dataset factory returns: train and validation splits plus the metadata models need.

A dataset factory is `factory(seed, /, *, settings...) -> DatasetBundle`. The model factory
receives `bundle.meta`, so a config never repeats the input shape or the number of classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset, default_collate


@dataclass(frozen=True)
class DataMeta:
    """Shapes and sizes a model factory needs."""

    task: Literal["classification", "regression", "lm"]
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    num_classes: int | None = None  # classification
    output_dim: int | None = None  # regression targets per sample
    vocab_size: int | None = None  # token inputs
    seq_len: int | None = None  # token inputs
    pixel_mean: tuple[float, ...] | None = None  # images: per-channel statistics they were normalised with
    pixel_std: tuple[float, ...] | None = None


@dataclass
class DatasetBundle:
    train: Dataset
    val: Dataset
    meta: DataMeta
    # Transforms fitted on the training split (e.g. standardisation statistics), written next to
    # exported models so inference prepares inputs exactly as training did.
    preprocessing: dict | None = None
    # A fitted object with `.transform(raw)` (tabular sources' scikit-learn pipeline), pickled into
    # the run directory as preprocessing.pkl and copied next to exported models.
    transform: object | None = None
    # What cleaning did (data.dedup's counts), for the console and manifest.json.
    cleaning: dict | None = None


class ArrayDataset(Dataset):
    """In-memory tensors (inputs, targets) with whole-batch indexing.

    `__getitems__` lets the DataLoader fetch a batch with one tensor index instead of collating
    single samples, which is most of the loader's cost for small models. `prepare` turns stored
    inputs into model inputs per batch (uint8 pixels into normalised floats: 4x less memory held).
    """

    in_memory = True  # num_workers: auto loads it in the training process

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, prepare: Callable | None = None):
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs, self.targets, self.prepare = inputs, targets, prepare

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.__getitems__([index])
        return inputs[0], targets[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        inputs = self.inputs[index]
        return (self.prepare(inputs) if self.prepare else inputs), self.targets[index]

    def subset(self, indices) -> ArrayDataset:
        index = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.inputs[index], self.targets[index], self.prepare)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for tensor in (self.inputs, self.targets):
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def collate(batch):
    """Batches already built by `__getitems__` pass through; lists of samples are stacked."""
    return batch if isinstance(batch, tuple) else default_collate(batch)


def fingerprint(dataset: Dataset) -> str | None:
    """A short content hash of a split, for manifest.json (None when the dataset cannot say)."""
    method = getattr(dataset, "fingerprint", None)
    return method() if callable(method) else None


# The run's own fitted transform while a run's data is rebuilt (eval, export, resume); None: fit anew.
_FITTED_TRANSFORM: ContextVar[object | None] = ContextVar("mlrun_fitted_transform", default=None)


@contextlib.contextmanager
def run_transform(run_dir: Path):
    """While the block runs, sources that fit a transform (tabular) apply the run's preprocessing.pkl
    instead of fitting on the data they read: eval and export on other data, and a resume after the
    files changed, then prepare inputs exactly as the weights were trained on. No file: fit as usual."""
    path = run_dir / "preprocessing.pkl"
    transform = None
    if path.is_file():
        with path.open("rb") as file:
            transform = pickle.load(file)
    token = _FITTED_TRANSFORM.set(transform)
    try:
        yield
    finally:
        _FITTED_TRANSFORM.reset(token)


def fitted_transform() -> object | None:
    """The transform set by `run_transform`, or None when the source should fit its own."""
    return _FITTED_TRANSFORM.get()
