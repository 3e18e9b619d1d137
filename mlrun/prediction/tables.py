"""Tables for `mlrun predict`: the run's own fitted pipeline applied to a new CSV, Parquet or JSON Lines file.

Rows are named by their 1-based data row (the header is not a row), as in the messages of
`mlrun train`: missing columns, missing values and categories the run never saw stop with the row.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np

from mlrun.data.csv_format import CsvFormat
from mlrun.data.tabular import read_table_file
from mlrun.errors import UsageError, did_you_mean
from mlrun.prediction.prepared import Inputs


def read_frame(path: Path, csv: CsvFormat = CsvFormat()):
    """The table file INPUT names (by its suffix: .csv, .parquet, .jsonl/.ndjson/.json); a CSV read as `csv`
    says (a csv run's own data.delimiter and data.decimal)."""
    try:
        import pandas  # noqa: F401 - missing pandas gets the extra to install, before anything is read
    except ImportError:
        raise UsageError("reading tables needs pandas: pip install 'mlrun[tabular]'") from None
    if path.is_dir():
        raise UsageError(
            f"INPUT: '{path}' is a folder; this run reads one table file (.csv, .parquet or .jsonl) with its "
            "training columns"
        )
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy", ".pt", ".safetensors", ".pkl"):  # read as text, they failed on a decode error
        raise UsageError(
            f"INPUT: '{path}' is an array file; predict reads a table (.csv, .parquet or .jsonl) of feature "
            "columns, one row per sample (an image as its values in row-major order)"
        )
    reader = "jsonl" if suffix in (".jsonl", ".ndjson", ".json") else "parquet" if suffix == ".parquet" else "csv"
    return read_table_file(path, "INPUT", reader, csv=csv)


def _a_number(name) -> bool:
    """Whether a column name is a number (pandas renames a repeated name "0.0" to "0.0.1")."""
    for text in (str(name), re.sub(r"\.\d+$", "", str(name))):
        try:
            float(text)
            return True
        except ValueError:
            pass
    return False


def _first_rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    return ", ".join(str(r + 1) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")


def check_categories(frame, pipeline, categorical: list[str], path: Path) -> None:
    """Categories the run never saw would be silently encoded as all zeros: stop and name the row."""
    if not categorical:
        return
    encoder = pipeline.named_steps["columns"].named_transformers_["categorical"].steps[-1][1]
    for column, known in zip(categorical, encoder.categories_):
        values = frame[column]
        unseen = ~values.isin(list(known)) & values.notna()
        if unseen.any():
            first = values[unseen].iloc[0]
            raise UsageError(
                f"{path}: column '{column}' has {int(unseen.sum())} values the run never saw in training "
                f"(data rows {_first_rows(unseen.to_numpy())}; first {first!r}; known: "
                f"{', '.join(map(str, list(known)[:10]))}); map them to a known category or retrain"
            )


def require_features(features: list[str], columns: list[str], path: Path) -> None:
    """Every training feature must be a column; a near-miss is suggested only among the columns the run
    does not use (a present feature column is not a misspelling of a missing one)."""
    missing = [name for name in features if name not in columns]
    if missing:
        spare = [c for c in columns if c not in features]
        raise UsageError(
            f"INPUT: '{path}' lacks the training column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)}.{did_you_mean(missing[0], spare)} The run reads every "
            f"feature it was trained on: {', '.join(features)}."
        )


def check_numbers(frame, numeric: list[str], path: Path) -> None:
    """Text in a numeric column ('?', 'n/a') names the column, the rows and the cell, not scikit-learn's error."""
    import pandas as pd

    for column in numeric:
        values = frame[column]
        text = (pd.to_numeric(values, errors="coerce").isna() & values.notna()).to_numpy()
        if text.any():
            raise UsageError(
                f"{path}: column '{column}' holds {int(text.sum())} cell(s) that are not numbers (data rows "
                f"{_first_rows(text)}; first {values[text].iloc[0]!r}); the run reads it as numbers. Fix the cells, "
                "or leave them empty if the run imputes missing values (data.impute)"
            )


def labels_to_targets(values: np.ndarray, predictor, path: Path, where: str):
    """Labels as the run's targets: class ids in the run's class order, or float values."""
    import torch

    if predictor.meta.task != "classification":
        return torch.as_tensor(np.asarray(values, dtype=np.float32))
    classes = predictor.preprocessing.get("classes") or list(range(predictor.meta.num_classes))
    index = {_label_key(c): i for i, c in enumerate(classes)}
    for i, stored in enumerate(predictor.preprocessing.get("class_ids") or []):  # hf_disk's ClassLabel runs name
        index.setdefault(_label_key(stored), i)  # their classes; the dataset's own files (to_csv) hold the ids
    keys = [_label_key(v.item() if hasattr(v, "item") else v) for v in values]
    unknown = np.array([k not in index for k in keys])
    if unknown.any():
        raise UsageError(
            f"{path}: {where} has {int(unknown.sum())} labels the run has no class for (data rows "
            f"{_first_rows(unknown)}; first {keys[int(np.flatnonzero(unknown)[0])]!r}; classes: "
            f"{', '.join(map(str, classes[:10]))})"
        )
    return torch.as_tensor([index[k] for k in keys], dtype=torch.long)


def _label_key(value) -> str:
    """A label as text, a whole number written as a float (2.0, "2.0": pandas reads a column with an empty
    cell as floats) as the integer, as `mlrun eval` reads it."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def note_unscored(path: Path, where: str, missing: np.ndarray) -> None:
    """Some samples lack a label: the file is predicted, not scored; said, not silent."""
    print(
        f"mlrun: note: {path}: {where} is empty for {int(missing.sum())} of {len(missing)} samples (data rows "
        f"{_first_rows(missing)}), so the file is not scored; label every sample to score it",
        file=sys.stderr,
    )


def _dataset(x: np.ndarray, targets, rows: int) -> Inputs:
    import torch

    from mlrun.data.bundle import ArrayDataset

    labelled = targets is not None
    targets = targets if labelled else torch.zeros(rows, dtype=torch.long)
    dataset = ArrayDataset(torch.as_tensor(np.asarray(x, dtype=np.float32)), targets)
    return Inputs(dataset, [{"row": i + 1} for i in range(rows)], labelled)


def read_table(path: Path, predictor) -> Inputs:
    """csv / parquet runs: the training columns through the run's fitted preprocessing.pkl."""
    described = predictor.preprocessing.get("tabular") or {}
    features, categorical = described.get("features"), described.get("categorical") or []
    if predictor.transform is None or features is None:
        raise UsageError(f"{predictor.weights.parent}: no fitted preprocessing (preprocessing.pkl); re-export the run")
    settings = predictor.config.data.settings
    frame = read_frame(path, CsvFormat.of_settings(settings))
    require_features(features, list(frame.columns), path)
    if settings.get("impute", "error") == "error":
        for column in features:
            missing = frame[column].isna().to_numpy()
            if missing.any():
                raise UsageError(
                    f"{path}: column '{column}' has {int(missing.sum())} missing values (data rows "
                    f"{_first_rows(missing)}); the run was trained without imputation (data.impute: error)"
                )
    check_categories(frame, predictor.transform, categorical, path)
    check_numbers(frame, [c for c in features if c not in categorical], path)
    try:
        x = predictor.transform.transform(frame[features])
    except ValueError as exc:
        raise UsageError(f"{path}: the run's preprocessing cannot read these columns: {exc}") from None
    return _dataset(x, _labels(frame, settings.get("target"), predictor, path), len(frame))


def _labels(frame, column, predictor, path: Path):
    """The label column's targets when every row has one; None (a note when only some do) otherwise."""
    if column is None or column not in frame.columns:
        return None
    missing = frame[column].isna().to_numpy()
    if missing.any():
        note_unscored(path, f"column '{column}'", missing)
        return None
    return labels_to_targets(frame[column].to_numpy(), predictor, path, f"column '{column}'")


LABEL_COLUMNS = ("label", "target", "y")


def read_feature_columns(path: Path, predictor) -> Inputs:
    """Array sources (digits, npz, ...): one numeric column per input feature, in training order,
    plus an optional label column (the run's data.target / data.label, or label / target / y); sources
    that read named columns (parquet_shards, hf_disk) take the training columns by name; raw values,
    standardised here as in training. Samples of more dimensions (npz images) are rows of all their
    values in row-major order, reshaped here; a source that made images of its rows (digits `as_image`:
    64 pixels as 1x8x8, scaled) records the scale and shape, and new rows get both."""
    frame = read_frame(path)
    names = [str(column) for column in frame.columns]
    counted = names == [str(i) for i in range(len(names))]  # pandas' own header for unnamed columns: a header
    if names and not counted and all(map(_a_number, names)):  # its first sample became the column names
        raise UsageError(
            f"{path}: the first row holds numbers, not column names, so it would be taken as the header and "
            f"not predicted; add a header row (any names, one per feature, plus an optional "
            f"{'/'.join(LABEL_COLUMNS)} column)"
        )
    settings = predictor.config.data.settings
    own_label = settings.get("target") or settings.get("label")  # parquet_shards' target, hf_disk's label
    label = next((c for c in (own_label, *LABEL_COLUMNS) if isinstance(c, str) and c in frame.columns), None)
    columns = [c for c in frame.columns if c != label]
    # Sources that read named columns record their names: those are taken by name, in training order.
    named = predictor.preprocessing.get("feature_columns") or (predictor.preprocessing.get("standardize") or {}).get(
        "features"
    )
    if named:
        require_features(named, [str(c) for c in columns], path)
        columns = [next(c for c in columns if str(c) == name) for name in named]
    shape = tuple(predictor.preprocessing.get("reshape") or predictor.meta.input_shape)
    width = math.prod(shape)
    if len(columns) != width:
        raise UsageError(
            f"{path}: {len(columns)} feature columns, the model takes {width} (one column per feature, "
            f"in training order, plus an optional {'/'.join(LABEL_COLUMNS)} column)"
        )
    import pandas as pd

    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)  # text, empty cells and infinities alike
    if bad.any():
        raise UsageError(f"{path}: data rows {_first_rows(bad)} have a missing or non-numeric feature")
    # digits / iris / wine trained on features standardised with the training split's statistics,
    # recorded in the run (and in an export's preprocessing.json): new raw rows get the same.
    fitted = predictor.preprocessing.get("standardize")
    if fitted is not None:
        values = (values - np.asarray(fitted["mean"])) / np.asarray(fitted["std"])
    values = (values * predictor.preprocessing.get("scale", 1.0)).reshape(-1, *shape)
    return _dataset(values, _labels(frame, label, predictor, path), len(frame))
