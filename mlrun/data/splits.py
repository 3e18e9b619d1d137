"""What every file-based source shares: finding its files, splitting by seed, encoding labels.

Splits are a pure function of (number of samples, labels, val_fraction, seed), stratified for
classification so every class keeps its share on both sides.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from mlrun.errors import UsageError, did_you_mean

# The `val_fraction` setting of every data source: a share of the samples held out for validation.
ValFraction = Annotated[float, Field(gt=0.0, lt=1.0)]


def resolve_files(patterns: str | list[str], key: str, kind: str = "file") -> list[Path]:
    """Every file matching one or more globs, sorted; an error naming the key when none match."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        matches = [m for m in matches if (m.is_dir() if kind == "folder" else m.is_file())]
        if not matches:
            raise UsageError(f"{key}: no {kind} matches '{pattern}' (paths are relative to {Path.cwd()}).")
        found.extend(matches)
    return found


def resolve_one_file(pattern: str, key: str) -> Path:
    """The one file `pattern` names; a glob matching several is an error (these sources read one file)."""
    files = resolve_files(pattern, key)
    if len(files) > 1:
        shown = ", ".join(f"'{f}'" for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise UsageError(
            f"{key}: '{pattern}' matches {len(files)} files ({shown}); this source reads one file: name one, "
            "or join them first"
        )
    return files[0]


def require_columns(names: list[str], available, key: str, source: str) -> None:
    """Every name must be a column of `source`; else one message with the closest column and the list."""
    for name in names:
        if name not in available:
            raise UsageError(
                f"{key}: column '{name}' is not in {source}.{did_you_mean(name, available)} "
                f"Columns: {', '.join(map(str, available))}."
            )


def split_indices(
    count: int, val_fraction: float, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): stratified by `labels` when given, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(count)
        cut = int(round(count * val_fraction))
        return np.sort(order[cut:]), np.sort(order[:cut])
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        # A class of one sample stays in training: a validation-only class cannot be scored.
        cut = min(len(members) - 1, int(round(len(members) * val_fraction)))
        val.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def first_per_class(y: np.ndarray, count: int) -> np.ndarray:
    """Indices, in order, of the first `count` samples of each class in `y` (a few-shot training split:
    `y` comes shuffled by the seed, so each seed draws other samples)."""
    keep, seen = [], {}
    for index, label in enumerate(y.tolist()):
        if seen.get(label, 0) < count:
            seen[label] = seen.get(label, 0) + 1
            keep.append(index)
    short = {label: n for label, n in sorted(seen.items()) if n < count}
    if short:
        raise UsageError(
            f"data.train_per_class: {count} is more than the training split holds of some classes ({short}); "
            f"lower it to at most {min(seen.values())}, the smallest count"
        )
    return np.array(keep)


def draw_per_class(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of `count` samples of each class in `labels`, drawn by `seed` (a few-shot
    training split: each seed draws other samples; too few of a class is an error naming it)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.sort(order[first_per_class(labels[order], count)])


def encode_labels(train: np.ndarray, val: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Class ids 0..C-1 in sorted order of the training labels; a validation label outside them is an error."""
    classes = np.unique(train)
    unseen = ~np.isin(val, classes)
    if unseen.any():
        first = val[np.flatnonzero(unseen)[0]]
        raise UsageError(
            f"{where}: {int(unseen.sum())} validation samples have a label the training split never has "
            f"(first: {_plain(first)!r}; training classes: {_short(classes)}). Fix the labels or the split."
        )
    return np.searchsorted(classes, train), np.searchsorted(classes, val), [_plain(c) for c in classes]


def is_classification(labels: np.ndarray, task: str, where: str = "the targets") -> bool:
    """`task: auto` means classification for integer, boolean or string labels, regression for floats.

    Floats that are all a few whole numbers (0.0 / 1.0 read from a CSV) are most likely classes: the
    choice of regression is then said aloud, with the setting that changes it.
    """
    if task != "auto":
        return task == "classification"
    if labels.dtype.kind in "iu":
        _warn_if_a_quantity(labels, where)
    if labels.dtype.kind in "iubUSO":
        return True
    if labels.dtype.kind == "f":
        values = np.unique(labels[~np.isnan(labels)])
        if 0 < len(values) <= 10 and np.all(values == np.round(values)):
            print(
                f"mlrun: warning: {where} holds floats with only {len(values)} whole values {_short(values)}: "
                "task auto trains a regression. If they are classes set data.task: classification "
                "(data.task: regression keeps the regression and silences this).",
                file=sys.stderr,
                flush=True,
            )
    return False


def _warn_if_a_quantity(labels: np.ndarray, where: str) -> None:
    """Integers that are nearly all distinct are most likely a count or a measure, not classes: task auto
    would train one class per value (a user trial: 133 classes of 178 rows, split without warning)."""
    classes = len(np.unique(labels))
    if classes > 20 and classes > len(labels) // 2:
        print(
            f"mlrun: warning: {where} holds {classes} distinct whole numbers in {len(labels)} rows: task auto "
            "trains one class per value. If it is a quantity set data.task: regression (data.task: "
            "classification keeps the classes and silences this).",
            file=sys.stderr,
            flush=True,
        )


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _short(values, limit: int = 10) -> str:
    shown = ", ".join(repr(_plain(v)) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
