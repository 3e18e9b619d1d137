"""`parquet_shards`: a table split over many Parquet files, read lazily by row group with bounded memory.

    mlrun train configs/shards.yaml        # data: {name: parquet_shards, path: "data/shards/*.parquet", ...}

Nothing is read whole. At build time only the files' footers (row counts per row group) and the target
column are read; training reads a row group when a batch needs one of its rows and keeps the last
`cache_row_groups` of them (an LRU cache), so resident memory is bounded by the cache, not the data.
A global random permutation would touch a different row group for nearly every sample, so the
training order is a *block shuffle* that is a pure function of (seed, epoch): the row groups in a
random order, then the rows of each window of `shuffle_block` row groups permuted together (the
design of MosaicML streaming's shuffles). Any number of loader workers and processes sees the same
order, and a resume continues it exactly.

Numeric features are standardised with a mean and standard deviation fitted on at most `fit_rows`
training rows drawn from a seeded sample of row groups; the fitted statistics are pickled into the
run (preprocessing.pkl) so eval, export and resume reuse them instead of fitting again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import NonNegativeInt, PositiveInt
from torch.utils.data import Dataset

from mlrun.data.bundle import DataMeta, DatasetBundle
from mlrun.data.shard_files import BatchReadError
from mlrun.data.splits import ValFraction, is_classification, require_columns, resolve_files, split_indices
from mlrun.errors import UsageError
from mlrun.registry import datasets

# Shards' schema metadata written by `mlrun prepare`: what the model and augmentations need of the source's
# DataMeta, as JSON (one sample's shape; images' normalisation statistics, which padding and rotation fill with).
META_KEY = b"mlrun.meta"


@dataclass(frozen=True)
class Standardize:
    """The fitted transform: (x - mean) / std per feature column, and the class list of the target."""

    features: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    classes: tuple | None  # classification: the sorted labels; a label's index is its class id

    def transform(self, frame) -> np.ndarray:
        """Features of a pandas DataFrame or a pyarrow Table (columns by name) -> float32 (rows, features)."""
        values = np.column_stack([np.asarray(frame[name], dtype=np.float64) for name in self.features])
        return ((values - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True)
class Shard:
    path: Path
    row_groups: tuple[int, ...]  # rows in each row group
    schema: object  # the footer's pyarrow Schema: column names and types

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("dataset 'parquet_shards' needs pyarrow: pip install 'mlrun[tabular]'") from None
    return pq


def index_shards(paths: list[Path], key: str, skip_corrupt: bool) -> list[Shard]:
    """Each shard's row-group sizes, from its footer alone; an unreadable shard exits 2 (or is skipped)."""
    pq = _parquet()
    shards, skipped = [], []
    for path in paths:
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:  # noqa: BLE001 - any unreadable footer gets the same message
            if not skip_corrupt:
                raise UsageError(
                    f"{key}: shard '{path}' is not a readable Parquet file ({exc}). Replace or remove it, or set "
                    "data.skip_corrupt: true to train without it."
                ) from None
            skipped.append(path)
            continue
        sizes = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        shards.append(Shard(path, sizes, meta.schema.to_arrow_schema()))
    if skipped:
        names = ", ".join(map(str, skipped))
        print(f"mlrun: data: skipped {len(skipped)} unreadable shard(s): {names}", file=sys.stderr)
    if not shards or not sum(sum(s.row_groups) for s in shards):
        raise UsageError(f"{key}: the shards hold no rows.")
    return shards


class ShardedTable(Dataset):
    """Rows `rows` (global row numbers, sorted) of the shards, as (standardised features, target) batches."""

    in_memory = False  # num_workers: auto reads in worker processes

    def __init__(self, shards, rows, transform, target: str, classify: bool, cache_row_groups, block, shape=None):
        self.shards, self.rows, self.transform, self.target = shards, rows, transform, target
        self.shape = shape or (len(transform.features),)
        self.classify, self.cache_size, self.block = classify, cache_row_groups, block
        self.groups = [(s, i) for s in shards for i in range(len(s.row_groups))]
        sizes = [n for s in shards for n in s.row_groups]
        self.group_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.files: dict[Path, object] = {}
        self.files_pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    def _group_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.group_start, rows, side="right") - 1

    def _read_group(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        if group in self.cache:
            self.cache.move_to_end(group)
            return self.cache[group]
        shard, index = self.groups[group]
        try:
            frame = self._file(shard.path).read_row_group(index, [*self.transform.features, self.target])
        except Exception as exc:  # noqa: BLE001 - a damaged page surfaces here, not in the footer
            raise BatchReadError(f"data: shard '{shard.path}' row group {index} cannot be read ({exc}).") from None
        labels = frame[self.target].to_numpy()
        if self.classify:
            labels = np.searchsorted(np.asarray(self.transform.classes), labels)
        read = (self._finite(self.transform.transform(frame), shard, index), labels)
        self.cache[group] = read
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return read

    def _finite(self, features: np.ndarray, shard: Shard, index: int) -> np.ndarray:
        """The row group's features, refused when any is NaN or infinite: one would turn the fitted mean, the
        loss or a validation metric into NaN far from its cause. Checked per decoded row group, so the whole
        data is never read for it: the row groups standardisation fits on are checked before training, the
        others when a batch first reads them."""
        bad = ~np.isfinite(features)
        if not bad.any():
            return features
        rows, columns = np.nonzero(bad)
        names = [self.transform.features[c] for c in np.unique(columns)]
        first = sum(shard.row_groups[:index]) + int(rows[0])  # the row's number within the shard
        raise BatchReadError(
            f"data: shard '{shard.path}' has NaN or infinite features: {len(np.unique(rows))} row(s) of row group "
            f"{index} in column(s) {', '.join(names)} (first: row {first} of the shard, column "
            f"'{self.transform.features[columns[0]]}'). Drop or impute those rows when writing the shards."
        )

    def _file(self, path: Path):
        """The shard's open ParquetFile, opened once per process (a forked loader worker opens its own)."""
        if self.files_pid != os.getpid():
            self.files, self.files_pid = {}, os.getpid()
        if path not in self.files:
            self.files[path] = _parquet().ParquetFile(path)
        return self.files[path]

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        groups = self._group_of(rows)
        inputs = np.empty((len(rows), len(self.transform.features)), dtype=np.float32)
        targets = np.empty(len(rows), dtype=np.int64 if self.classify else np.float32)
        for group in np.unique(groups):
            where = np.flatnonzero(groups == group)
            x, y = self._read_group(int(group))
            offsets = rows[where] - self.group_start[group]
            inputs[where], targets[where] = x[offsets], y[offsets]
        return torch.from_numpy(inputs).view(len(rows), *self.shape), torch.from_numpy(targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.__getitems__([index])
        return inputs[0], targets[0]

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor | None:
        """The training order of (seed, epoch): row groups shuffled, then rows within blocks of groups
        (None with shuffle_block 0: the sampler's plain permutation, the order of in-memory sources)."""
        if not self.block:
            return None
        rng = np.random.default_rng([seed, epoch])
        groups = self._group_of(self.rows)
        bounds = np.flatnonzero(np.diff(groups)) + 1  # positions where the next row group starts
        runs = np.split(np.arange(len(self.rows)), bounds)
        runs = [runs[i] for i in rng.permutation(len(runs))]
        blocks = [np.concatenate(runs[i : i + self.block]) for i in range(0, len(runs), self.block)]
        return torch.from_numpy(np.concatenate([rng.permutation(block) for block in blocks]))

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for shard in self.shards:
            digest.update(f"{shard.path.name}:{shard.row_groups}".encode())
        digest.update(self.rows.tobytes())
        return digest.hexdigest()[:16]


def fit_standardize(shards, rows, features, target, classes, fit_rows: int, seed: int) -> Standardize:
    """Mean and std of each feature over the training rows of seeded random row groups, up to `fit_rows` rows.

    Whole row groups, not scattered rows: a row-level sample would read nearly every row group of the data.
    """
    probe = ShardedTable(shards, rows, Standardize(tuple(features), 0.0, 1.0, None), target, False, 1, 1)
    groups = probe._group_of(rows)
    starts = np.flatnonzero(np.r_[True, np.diff(groups) > 0])  # where each row group's rows begin in `rows`
    ends = np.r_[starts[1:], len(rows)]
    taken, values = 0, []
    for g in np.random.default_rng(seed).permutation(len(starts)):
        if taken >= fit_rows:
            break
        span = np.arange(starts[g], min(ends[g], starts[g] + fit_rows - taken))
        values.append(probe.__getitems__(span)[0])
        taken += len(span)
    values = np.concatenate(values)
    std = values.std(axis=0, dtype=np.float64)
    return Standardize(tuple(features), values.mean(axis=0, dtype=np.float64), np.where(std > 0, std, 1.0), classes)


@datasets.register("parquet_shards", fits_transform=True)
def parquet_shards(
    seed: int,
    fitted: Standardize | None = None,
    /,
    *,
    path: str | list[str],
    target: str,
    features: list[str] | None = None,
    val_path: str | list[str] | None = None,
    val_fraction: ValFraction = 0.1,
    scale: Literal["standard", "none"] = "standard",
    task: Literal["auto", "classification", "regression"] = "auto",
    fit_rows: PositiveInt = 10_000,
    cache_row_groups: PositiveInt = 8,
    shuffle_block: NonNegativeInt = 4,
    skip_corrupt: bool = False,
) -> DatasetBundle:
    """Parquet shards (a glob, a folder's *.parquet, or a list of them) read by row group, never whole.

    Args:
        path: shard files: a glob ('data/shards/*.parquet'), a folder, or a list of globs; every one must match.
        target: the column to predict.
        features: numeric feature columns; default every column except the target.
        val_path: shards of the validation split (e.g. `mlrun prepare`'s val/), instead of val_fraction.
        val_fraction: share of rows held out for validation (a seeded random split of all rows).
        task: auto (integer or string targets classify, float targets regress), classification or regression.
        scale: standard (zero mean, unit variance per feature) or none (data `mlrun prepare` already normalised).
        fit_rows: training rows the standardisation statistics are fitted on (a seeded sample).
        cache_row_groups: decoded row groups kept in memory per loader process (the memory bound).
        shuffle_block: row groups whose rows are shuffled together each epoch (more mixes better, reads more);
            0: one permutation of all rows, the in-memory sources' order (fast while the cache holds the data).
        skip_corrupt: an unreadable shard is skipped and counted instead of stopping with exit 2.
    """
    shards = index_shards(resolve_files(_globs(path), "data.path"), "data.path", skip_corrupt)
    val_shards = []
    if val_path:
        val_shards = index_shards(resolve_files(_globs(val_path), "data.val_path"), "data.val_path", skip_corrupt)
    pq = _parquet()
    schema = pq.ParquetFile(shards[0].path).schema_arrow
    require_columns([target], schema.names, "data.target", f"'{shards[0].path}'")
    features = features or [name for name in schema.names if name != target]
    require_columns(features, schema.names, "data.features", f"'{shards[0].path}'")
    require_in_every_shard([target, *features], shards, "data.path")
    require_in_every_shard([target, *features], val_shards, "data.val_path")
    label_type = run_label_type(shards[0], target, task)
    for where, key in ((shards, "data.path"), (val_shards, "data.val_path")):
        require_types(where, features, target, label_type, key)
    labels = _column(shards, target, label_type)
    classify = is_classification(labels, task, f"data.target ('{target}')")
    if val_path:
        train_rows, val_rows = np.arange(len(labels)), None
    else:
        train_rows, val_rows = split_indices(len(labels), val_fraction, seed, labels if classify else None)
    if fitted is None:
        classes = tuple(np.unique(labels).tolist()) if classify else None
        fitted = fit_standardize(shards, train_rows, features, target, classes, fit_rows, seed)
        if scale == "none":
            fitted = Standardize(fitted.features, np.zeros(len(features)), np.ones(len(features)), classes)
    stored, source = _stored_meta(schema, len(features))
    shape = stored["input_shape"]

    def make(rows, where):
        return ShardedTable(where, rows, fitted, target, classify, cache_row_groups, shuffle_block, shape)

    train, val = make(train_rows, shards), make(val_rows, shards)
    if val_path:
        val = make(np.arange(sum(sum(s.row_groups) for s in val_shards)), val_shards)
    meta = DataMeta(
        task="classification" if classify else "regression",
        **stored,
        num_classes=len(fitted.classes) if classify else None,
        output_dim=None if classify else 1,
    )
    statistics = {"features": list(features), "mean": fitted.mean.tolist(), "std": fitted.std.tolist()}
    preprocessing = {"standardize": statistics}
    if classify:
        preprocessing["classes"] = _class_names(fitted.classes, source.get("classes"))
    if source.get("image"):  # images `mlrun prepare` wrote: predict decodes new image files as the source did
        preprocessing["image"] = source["image"]
    bundle = DatasetBundle(train, val, meta, preprocessing=preprocessing)
    bundle.transform = fitted
    return bundle


def _globs(path: str | list[str] | None) -> list[str]:
    """Globs of shard files; a folder means its *.parquet."""
    patterns = [] if path is None else [path] if isinstance(path, str) else path
    return [str(Path(p) / "*.parquet") if Path(p).is_dir() else p for p in patterns]


def require_in_every_shard(columns: list[str], shards: list[Shard], key: str) -> None:
    """Every shard holds the target and feature columns (checked on the footers, before anything is read):
    pyarrow reads a row group without a missing column silently, and the batch would fail far from the cause."""
    for shard in shards:
        missing = [name for name in columns if name not in shard.columns]
        if missing:
            raise UsageError(
                f"{key}: shard '{shard.path}' has no column(s) {', '.join(missing)}; data.target and data.features "
                f"are read from every shard. Rewrite the shard with them, or leave it out of {key}."
            )


def _column(shards: list[Shard], name: str, arrow_type) -> np.ndarray:
    """One column of every shard as `arrow_type` (the target: classes and stratified splits need all of it).
    Cast shard by shard: an int32 shard beside int64 ones, or whole floats beside integers, are the same
    labels, and one concatenated array of mixed types would change the classes or fail to sort them."""
    pq = _parquet()
    values = []
    for shard in shards:
        column = pq.read_table(shard.path, columns=[name]).column(0)
        try:
            values.append(column.cast(arrow_type).to_numpy())
        except Exception as exc:  # noqa: BLE001 - pyarrow's ArrowInvalid: a value the run's type cannot hold
            raise UsageError(
                f"data: shard '{shard.path}' column '{name}' ({_type_name(column.type)}) does not convert to the "
                f"run's label type {_type_name(arrow_type)} (the first shard's, at full width): {exc}. Write the "
                "column with one type in every shard."
            ) from None
    return np.concatenate(values)


def _stored_meta(schema, features: int) -> tuple[dict, dict]:
    """What `mlrun prepare` recorded of the source: its DataMeta's sample shape (images keep (C, H, W)) and
    pixel statistics (a plain table is a vector of its features), and an image source's decoding and class
    names (commands/prepare.py image_source; {} otherwise)."""

    stored = json.loads((schema.metadata or {}).get(META_KEY, b"{}"))
    shape = tuple(stored.get("input_shape") or (features,))
    if int(np.prod(shape)) != features:
        raise UsageError(f"data.features: {features} columns do not fill the shards' sample shape {shape}.")
    pixels = {key: tuple(stored[key]) for key in ("pixel_mean", "pixel_std") if stored.get(key)}
    source = {key: stored[key] for key in ("image", "classes") if stored.get(key)}
    return {"input_shape": shape, **pixels}, source


def _class_names(labels: tuple, names: list | None) -> list:
    """The classes as the run records them: the source's names where the shards' labels are ids into them
    (`mlrun prepare` of an image folder writes 0, 1, ... for cat, dog, ...), else the labels themselves."""
    if names and all(isinstance(label, int) and 0 <= label < len(names) for label in labels):
        return [names[label] for label in labels]
    return list(labels)


def run_label_type(first: Shard, target: str, task: str):
    """The type every shard's target is read as: the first shard's kind at full width, int64 for integers and
    booleans (an int32 first shard must not cut a later shard's large ids), float64 for floats and for any
    regression, text as it is stored. Whole floats in a later shard then stay classes. A target that is
    neither numbers nor text (dates, lists) exits 2 here, before anything is read."""
    import pyarrow as pa
    import pyarrow.types as t

    found = first.schema.field(target).type
    kind = _kind(found)
    if kind is None:
        raise UsageError(
            f"data.target: column '{target}' of shard '{first.path}' is {_type_name(found)}; parquet_shards reads "
            "labels of numbers (classes or values) or text (classes). Convert it when writing the shards."
        )
    if kind == "text":
        return found
    return pa.float64() if task == "regression" or t.is_floating(_values(found)) else pa.int64()


def require_types(shards: list[Shard], features: list[str], target: str, label_type, key: str) -> None:
    """Every shard stores the features as numbers and the target as the run's kind of label, checked on the
    footers. Numeric types may differ between shards (int64 in one, float64 in another: features are read as
    float32 and labels cast to the run's type), but text where numbers are expected cannot be read."""
    expected = _kind(label_type)
    for shard in shards:
        for name in features:
            found = shard.schema.field(name).type
            if _kind(found) != "numbers":
                raise UsageError(
                    f"{key}: shard '{shard.path}' stores feature column '{name}' as {_type_name(found)}, where "
                    "parquet_shards expects numbers (any integer, float or boolean type). Write it as numbers in "
                    "every shard (encode categories), leave it out of data.features, or use the in-memory "
                    "'parquet' source, which encodes text columns."
                )
        found = shard.schema.field(target).type
        if _kind(found) != expected:
            raise UsageError(
                f"{key}: shard '{shard.path}' stores the target column '{target}' as {_type_name(found)}, but the "
                f"run's labels are {expected}, as in the first shard (read as {_type_name(label_type)}). Write "
                f"'{target}' as {expected} in every shard, or leave this shard out of {key}."
            )


def _kind(arrow_type) -> str | None:
    """'numbers' (integers, floats, booleans of any width), 'text', or None for other types (dates, lists)."""
    import pyarrow.types as t

    arrow_type = _values(arrow_type)
    if t.is_integer(arrow_type) or t.is_floating(arrow_type) or t.is_boolean(arrow_type):
        return "numbers"
    if t.is_string(arrow_type) or t.is_large_string(arrow_type):
        return "text"
    return None


def _values(arrow_type):
    """A dictionary column's (pandas categoricals) value type: what its cells hold; other types as they are."""
    import pyarrow.types as t

    return arrow_type.value_type if t.is_dictionary(arrow_type) else arrow_type


def _type_name(arrow_type) -> str:
    """Arrow's type name, with its floats named as numpy and pandas name them (double -> float64)."""
    name = str(arrow_type)
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(name, name)
