"""Tables as data: `csv` and `parquet`, with scikit-learn preprocessing fitted on the training split.

Numeric columns are imputed (when asked) and scaled; categorical columns one-hot or ordinal
encoded; then optional feature selection steps run in order (variance threshold, univariate top-k,
recursive elimination, L1-based, PCA). The fitted pipeline is fitted on the training split only,
applied to validation, and pickled into the run directory (`preprocessing.pkl`); eval, export and
resume rebuild the data with that pickled pipeline instead of fitting again: the registry entry
declares `fits_transform`, so the engine passes the run's fitted pipeline as a second runtime input.
"""

from __future__ import annotations

import inspect
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from mlrun.data.arrays import bundle_from_arrays, few_shot_rows
from mlrun.data.bundle import DatasetBundle
from mlrun.data.csv_format import SETTINGS as CSV_SETTINGS
from mlrun.data.csv_format import CsvFormat, check_decimal_commas, check_delimiter
from mlrun.data.splits import ValFraction, is_classification, require_columns, resolve_files, split_indices
from mlrun.errors import UsageError
from mlrun.registry import datasets


class FeatureSelection(BaseModel):
    """One feature-selection step, fitted on the training split after encoding and scaling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["variance", "kbest", "rfe", "l1", "pca"]
    """variance: drop near-constant features; kbest: top-k by a univariate score; rfe: recursive
    elimination with a linear model; l1: keep what an L1-penalised linear model uses; pca: project."""
    threshold: Annotated[float, Field(ge=0.0)] = 0.0
    """variance: features whose training variance is at most this are dropped."""
    k: PositiveInt | None = None
    """kbest, rfe: features to keep (default: half of them)."""
    score: Literal["f", "mutual_info"] = "f"
    """kbest: ANOVA F (classification) / F-regression, or mutual information."""
    c: PositiveFloat = 1.0
    """l1: inverse regularisation strength (smaller keeps fewer features)."""
    components: Annotated[float, Field(gt=0.0)] | None = None
    """pca: a whole number of components, or a fraction (< 1) of variance to explain; default all."""


def _selector(step: FeatureSelection, classify: bool, seed: int, features: int):
    from sklearn import decomposition, feature_selection, linear_model

    if step.k is not None and step.k > features:  # was cut to the width silently: a typo kept every feature
        raise UsageError(f"data.select: {step.method} k: {step.k} is more than the {features} features; lower k")
    k = min(step.k or max(1, features // 2), features)
    linear = linear_model.LogisticRegression(max_iter=2000) if classify else linear_model.LinearRegression()
    if step.method == "variance":
        return feature_selection.VarianceThreshold(step.threshold)
    if step.method == "kbest":
        scores = {
            ("f", True): feature_selection.f_classif,
            ("f", False): feature_selection.f_regression,
            # partial, not lambda: the fitted pipeline is pickled into the run directory.
            ("mutual_info", True): partial(feature_selection.mutual_info_classif, random_state=seed),
            ("mutual_info", False): partial(feature_selection.mutual_info_regression, random_state=seed),
        }
        return feature_selection.SelectKBest(scores[step.score, classify], k=k)
    if step.method == "rfe":
        return feature_selection.RFE(linear, n_features_to_select=k)
    if step.method == "l1":
        from sklearn.svm import LinearSVC

        sparse = (
            LinearSVC(penalty="l1", dual=False, C=step.c, random_state=seed, max_iter=5000)
            if classify
            else linear_model.Lasso(alpha=1.0 / step.c, random_state=seed)
        )
        return feature_selection.SelectFromModel(sparse)
    components = step.components
    if components is not None and components >= 1:
        components = int(min(components, features))
    return decomposition.PCA(n_components=components, random_state=seed)


def _read(path: str, key: str, reader: str, na_values: list[str] = (), csv: CsvFormat = CsvFormat()):
    """The table at `path`; a glob matching several files (shards) reads them all, in sorted order,
    as one table. Returns (frame, what to name it in messages)."""
    try:
        import pandas as pd
    except ImportError:
        raise UsageError(f"dataset '{reader}' needs pandas: pip install 'mlrun[tabular]'") from None
    files = resolve_files(path, key)
    frames = [read_table_file(file, key, reader, na_values, csv) for file in files]
    first = list(frames[0].columns)
    differ = [
        f"'{f}' {_column_difference(list(t.columns), first)}" for f, t in zip(files, frames) if list(t.columns) != first
    ]
    if differ:
        more = f"; and {len(differ) - 3} more file(s)" if len(differ) > 3 else ""
        raise UsageError(
            f"{key}: {'; '.join(differ[:3])}{more}; every file matching '{path}' must have the same columns in the "
            f"same order as the first, '{files[0]}'."
        )
    if len(files) == 1:
        return frames[0], files[0]
    # Data rows in messages count through the files in this order, as one table.
    return pd.concat(frames, ignore_index=True), f"{path} ({len(files)} files read as one table, in sorted order)"


def read_table_file(file: Path, key: str, reader: str, na_values: list[str] = (), csv: CsvFormat = CsvFormat()):
    """One table file (`reader`: csv | parquet | jsonl; a CSV with `csv`'s delimiter and decimal mark) as a
    DataFrame; exit 2 naming `key` and the file when it cannot be read, holds no rows, or looks written with
    another delimiter. Shared by training's sources and `mlrun predict`."""
    import pandas as pd

    if reader == "csv":
        check_delimiter(file, key, csv.delimiter)
    try:
        if reader == "csv":
            frame = pd.read_csv(file, na_values=list(na_values) or None, sep=csv.delimiter, decimal=csv.decimal)
        elif reader == "jsonl":
            frame = pd.read_json(file, lines=True)
        else:
            frame = pd.read_parquet(file).replace(list(na_values), np.nan) if na_values else pd.read_parquet(file)
    except ImportError as exc:
        raise UsageError(f"{key}: reading parquet needs pyarrow: pip install 'mlrun[tabular]' ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise UsageError(f"{key}: cannot read '{file}' as {reader}: {exc}") from None
    if frame.empty:
        raise UsageError(f"{key}: '{file}' has no rows.")
    return frame


def _column_difference(columns: list[str], first: list[str]) -> str:
    """How a shard's columns differ from the first shard's, by the columns themselves: a table of 65 columns
    with one renamed reads 'lacks p5 and has q5', not as two lists of 65."""
    missing = [c for c in first if c not in columns]
    extra = [c for c in columns if c not in first]
    if missing or extra:
        said = [f"lacks {', '.join(map(str, missing))}"] if missing else []
        return " and ".join(said + ([f"has {', '.join(map(str, extra))}"] if extra else []))
    at = next((i for i, (a, b) in enumerate(zip(columns, first)) if a != b), None)
    if at is None:  # only a repeated name differs
        return f"has the columns {columns}, the first {first}"
    return f"has the same columns in another order (column {at + 1} is {columns[at]}, in the first {first[at]})"


def _warn_of_an_index_column(features: list[str], file: Path) -> None:
    """A column without a header name is most often a pandas index saved with the rows (to_csv without
    index=False): the row number as a feature, which learns the file's order (a user trial trained on it)."""
    unnamed = [c for c in features if str(c).startswith("Unnamed: ")]
    if unnamed:
        print(
            f"mlrun: warning: {file}: column(s) {', '.join(map(repr, unnamed))} have no header name (a saved pandas "
            "index?) and train as features; list data.features without them, or write the file with index=False",
            file=sys.stderr,
            flush=True,
        )


def _check_columns(frame, names: list[str], key: str, file: Path) -> None:
    require_columns(names, frame.columns, key, f"'{file}'")


def _check_numbers_with_text(frame, columns: list[str], file: Path) -> None:
    """A column of numbers with a few text cells ('?', 'n/a') would be one-hot encoded as text: exit 2."""
    import pandas as pd

    for column in columns:
        values = frame[column]
        numbers = pd.to_numeric(values, errors="coerce")
        text = values[numbers.isna() & values.notna()]
        if len(text) == 0 or numbers.notna().sum() < 0.8 * values.notna().sum():
            continue  # a real text column
        markers = sorted({str(v) for v in text})
        rows = ", ".join(str(i + 1) for i in np.flatnonzero((numbers.isna() & values.notna()).to_numpy())[:5])
        raise UsageError(
            f"data: column '{column}' of '{file}' is numeric except for {len(text)} cell(s) holding "
            f"{', '.join(repr(m) for m in markers[:5])} (data rows {rows}{', ...' if len(text) > 5 else ''}), "
            "so it would be one-hot encoded as text. If they mark missing values, set "
            f"data.na_values: {[*markers[:5]]} and data.impute (e.g. median); if the column is categorical, "
            "list it in data.categorical."
        )


def _check_missing(frame, columns: list[str], file: Path, what: str) -> None:
    for column in columns:
        rows = np.flatnonzero(frame[column].isna().to_numpy())
        if len(rows):
            shown = ", ".join(str(r + 1) for r in rows[:5])
            raise UsageError(
                f"data: column '{column}' of '{file}' has {len(rows)} missing values (data rows {shown}"
                f"{', ...' if len(rows) > 5 else ''}); {what}"
            )


def _pipeline(numeric, categorical, impute, encoding, scale, select, classify, seed, width):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric_steps = [] if impute == "error" else [SimpleImputer(strategy=impute, fill_value=0.0)]
    numeric_steps += {"standard": [StandardScaler()], "minmax": [MinMaxScaler()], "none": []}[scale]
    categorical_steps = [] if impute == "error" else [SimpleImputer(strategy="most_frequent")]
    categorical_steps.append(
        OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        if encoding == "onehot"
        else OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    )
    parts = []
    if numeric:
        parts.append(("numeric", make_pipeline(*numeric_steps) if numeric_steps else "passthrough", numeric))
    if categorical:
        parts.append(("categorical", make_pipeline(*categorical_steps), categorical))
    steps = [("columns", ColumnTransformer(parts))]
    steps += [(f"select{i}", _selector(step, classify, seed, width)) for i, step in enumerate(select)]
    return Pipeline(steps)


def _tabular(
    reader: str,
    seed: int,
    fitted,
    path: str,
    target: str,
    features: list[str] | None,
    categorical: list[str] | None,
    val_path: str | None,
    val_fraction: float,
    task: str,
    impute: str,
    categorical_encoding: str,
    scale: str,
    select: list[FeatureSelection],
    na_values: list[str],
    train_per_class: int | None,
    csv: CsvFormat,
) -> DatasetBundle:
    frame, file = _read(path, "data.path", reader, na_values, csv)
    _check_columns(frame, [target], "data.target", file)
    if features and target in features:
        raise UsageError(
            f"data.features: lists the target '{target}', so the model would read its own label; remove it"
        )
    if not features:
        features = [c for c in frame.columns if c != target]
        _warn_of_an_index_column(features, file)
    _check_columns(frame, features, "data.features", file)
    if categorical is None:
        from pandas.api.types import is_numeric_dtype

        categorical = [c for c in features if not is_numeric_dtype(frame[c])]
        if reader == "csv":  # a parquet column of such text was written as text: no setting reads it otherwise
            check_decimal_commas(frame, categorical, file, csv)  # inferred only: listed columns are meant
        _check_numbers_with_text(frame, categorical, file)
    _check_columns(frame, categorical, "data.categorical", file)
    numeric = [c for c in features if c not in categorical]
    val_frame, val_file = _read(val_path, "data.val_path", reader, na_values, csv) if val_path else (None, None)
    if val_frame is not None:
        _check_columns(val_frame, [target, *features], "data.val_path", val_file)
    for table, where in ((frame, file), (val_frame, val_file)):
        if table is None:
            continue
        _check_missing(table, [target], where, "drop those rows or fill the target.")
        if impute == "error":
            _check_missing(table, features, where, "set data.impute (mean, median, most_frequent, constant).")

    labels = frame[target].to_numpy()
    classify = is_classification(labels, task, f"data.target ('{target}')")
    if val_frame is None:
        train_idx, val_idx = split_indices(len(frame), val_fraction, seed, labels if classify else None)
        train_frame, val_frame = frame.iloc[train_idx], frame.iloc[val_idx]
    else:
        train_frame = frame
    if train_per_class is not None:  # before fitting: the preprocessing sees only the rows kept
        rows = few_shot_rows(train_frame[target].to_numpy(), train_per_class, seed, classify)
        train_frame = train_frame.iloc[rows]
    y_train, y_val = train_frame[target].to_numpy(), val_frame[target].to_numpy()
    pipeline = fitted  # the run's own, when eval, export or a resume rebuilds its data
    if pipeline is None:
        pipeline = _pipeline(
            numeric, categorical, impute, categorical_encoding, scale, select, classify, seed, len(features)
        )
        try:
            x_train = pipeline.fit_transform(train_frame[features], y_train)
        except ValueError as exc:
            raise UsageError(f"data.select: fitting the preprocessing failed: {exc}") from None
        x_val = pipeline.transform(val_frame[features])
    else:
        try:
            x_train, x_val = pipeline.transform(train_frame[features]), pipeline.transform(val_frame[features])
        except ValueError as exc:
            raise UsageError(
                f"{file}: the run's preprocessing.pkl does not fit these columns ({exc}); the table needs the "
                "columns the run was trained on"
            ) from None
    described = {
        "features": features,
        "categorical": categorical,
        "features_out": int(x_train.shape[1]),
        "transform": "preprocessing.pkl: a fitted scikit-learn Pipeline; call .transform(frame[features])",
    }
    bundle = bundle_from_arrays(
        np.asarray(x_train, dtype=np.float32),
        y_train,
        seed,
        val_fraction=val_fraction,
        task="classification" if classify else "regression",
        where=f"data.target ('{target}')",
        val=(np.asarray(x_val, dtype=np.float32), y_val),
        val_where=f"data.val_path ('{val_file}')" if val_file else None,
        preprocessing={"tabular": described},
    )
    bundle.transform = pipeline
    return bundle


# The csv source's settings more, in its docstring's Args (the parquet source has neither).
_CSV_HELP = """
        delimiter: the character between a CSV's columns: ',' by default, ';' as European Excel saves CSV, '\\t'
            for tab-separated files. A header that reads as one column holding another exits 2 naming it.
        decimal: a CSV's decimal mark: '.' by default, ',' as European Excel writes numbers (0,126). A text column
            of such numbers read with '.' exits 2 naming it."""


def _register(reader: str):
    def factory(
        seed: int,
        fitted=None,
        /,
        *,
        path: str,
        target: str,
        features: list[str] | None = None,
        categorical: list[str] | None = None,
        val_path: str | None = None,
        val_fraction: ValFraction = 0.2,
        task: Literal["auto", "classification", "regression"] = "auto",
        impute: Literal["error", "mean", "median", "most_frequent", "constant"] = "error",
        categorical_encoding: Literal["onehot", "ordinal"] = "onehot",
        scale: Literal["standard", "minmax", "none"] = "standard",
        select: list[FeatureSelection] = [],  # noqa: B006 - validated copy, never mutated
        na_values: list[str] = [],  # noqa: B006 - validated copy, never mutated
        train_per_class: PositiveInt | None = None,
        delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ",",
        decimal: Literal[".", ","] = ".",
    ) -> DatasetBundle:
        return _tabular(
            reader,
            seed,
            fitted,
            path,
            target,
            features,
            categorical,
            val_path,
            val_fraction,
            task,
            impute,
            categorical_encoding,
            scale,
            select,
            na_values,
            train_per_class,
            CsvFormat(delimiter, decimal),
        )

    factory.__name__ = reader
    factory.__doc__ = f"""A {reader} table: feature columns by name, numeric and categorical, one target column.

    Args:
        path: the {reader} file, or a glob of several (shards, read as one table in sorted order).
        target: the column to predict.
        features: feature columns; default every column except the target.
        categorical: categorical feature columns; default the non-numeric ones.
        val_path: a second {reader} file (or glob) used as the validation split (instead of val_fraction).
        val_fraction: share of rows held out for validation (stratified for classification).
        task: auto (integer or string targets classify, float targets regress), classification or regression.
        impute: missing feature values: error (stop and name the column), or fill numeric columns with the mean, median, most_frequent or constant 0 (categorical ones with the most frequent value).
        categorical_encoding: onehot (unknown categories in validation become all zeros) or ordinal.
        scale: numeric columns: standard (zero mean, unit variance), minmax or none.
        select: feature-selection steps in order, each {{method: variance|kbest|rfe|l1|pca, ...}}.
        na_values: cell texts that mean a missing value, e.g. ['?', 'n/a'] (then filled by impute).
        train_per_class: keep only this many training rows of each class, drawn by the seed (few-shot); the
            preprocessing is fitted on them; validation stays whole.{_CSV_HELP if reader == "csv" else ""}
    """  # noqa: E501
    if reader != "csv":  # delimiter and decimal are a CSV's own: parquet's settings (checks, `mlrun list`) lack them
        signature = inspect.signature(factory)
        kept = [param for param in signature.parameters.values() if param.name not in CSV_SETTINGS]
        factory.__signature__ = signature.replace(parameters=kept)
    return datasets.register(reader, fits_transform=True)(factory)


csv = _register("csv")
parquet = _register("parquet")
