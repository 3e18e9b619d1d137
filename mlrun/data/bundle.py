"""What a dataset factory returns: train and validation splits plus the metadata models need.

A dataset factory is `factory(seed, /, *, settings...) -> DatasetBundle`. The model factory
receives `bundle.meta`, so a config never repeats the input shape or the number of classes.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset, default_collate

from mlrun.data.batch import TARGET_KEY, split_batch


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
    # Batches of named tensors: the model's input names, in order (None: `(inputs, targets)` tuples).
    input_names: tuple[str, ...] | None = None


def meta_from_record(record: dict) -> DataMeta:
    """A DataMeta back from its JSON record (`dataclasses.asdict`: export.json, example_inputs.safetensors),
    its lists tuples again."""
    return DataMeta(**{key: tuple(value) if isinstance(value, list) else value for key, value in record.items()})


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


class TensorDictDataset(Dataset):
    """In-memory named tensors (features and `labels`), batched by one index per tensor like ArrayDataset."""

    in_memory = True

    def __init__(self, tensors: dict[str, torch.Tensor]):
        sizes = {name: len(t) for name, t in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"named tensors of different lengths: {sizes}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return {name: t for name, t in self.tensors.items() if name != TARGET_KEY}

    @property
    def targets(self) -> torch.Tensor:
        return self.tensors[TARGET_KEY]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: t[index] for name, t in self.tensors.items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices)
        return {name: t[index] for name, t in self.tensors.items()}

    def subset(self, indices) -> TensorDictDataset:
        return TensorDictDataset(self.__getitems__(torch.as_tensor(indices, dtype=torch.long)))

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.tensors.items()):
            digest.update(name.encode())
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def collate(batch):
    """Batches already built by `__getitems__` pass through; lists of samples are stacked."""
    return batch if isinstance(batch, (tuple, dict)) else default_collate(batch)


# Bumped when a dataset's fingerprint is computed another way: a resume compares only fingerprints of
# the same version (2: image folders and text_lm without absolute paths or file times).
FINGERPRINT_VERSION = 2


def fingerprint(dataset: Dataset) -> str | None:
    """A short content hash of a split, for manifest.json (None when the dataset cannot say)."""
    method = getattr(dataset, "fingerprint", None)
    return method() if callable(method) else None


def load_fitted_transform(run_dir: Path) -> object | None:
    """The run's fitted preprocessing (preprocessing.pkl), or None when its data fits none.

    Eval and export on other data, and a resume after the files changed, then prepare inputs exactly
    as the weights were trained on.
    """
    path = run_dir / "preprocessing.pkl"
    if not path.is_file():
        return None
    with path.open("rb") as file:
        return pickle.load(file)


def fetch_batch(dataset: Dataset, indices) -> object:
    """The samples at `indices` as one batch: `__getitems__` when the dataset has it, else collated items."""
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(list(indices))
    return collate([dataset[i] for i in indices])


def example_features(dataset: Dataset, size: int = 2):
    """The model inputs of the first `size` samples (targets dropped): what a dry-run forward needs."""
    return split_batch(fetch_batch(dataset, range(min(size, len(dataset)))))[0]
