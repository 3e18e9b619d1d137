"""New inputs prepared as the run prepared its training data, chosen by the run's data source.

    csv / parquet runs      a CSV, Parquet or JSON Lines table with the training columns (tables.py)
    image_folder, image_shards runs   a folder of images, or of class sub-folders when labelled (images.py);
                            also parquet_shards runs on images `mlrun prepare` wrote (their recorded "image")
    jsonl_text, jsonl_shards runs     a JSON Lines file of {"text": ...} records (texts.py)
    other array sources     a CSV / JSON Lines table of numeric feature columns, a sample of several
                            dimensions (npz images) as its values in row-major order (tables.py)

Each reader returns `Inputs` (prepared.py).
"""

from __future__ import annotations

from pathlib import Path

from mlrun.errors import UsageError
from mlrun.prediction.prepared import Inputs

ARRAYS = ("npz", "npy")  # sources that give their arrays as stored, whatever their shape


def read_inputs(path: Path, predictor) -> Inputs:
    if not path.exists():
        raise UsageError(f"INPUT: '{path}' not found (paths are relative to {Path.cwd()})")
    source = predictor.config.data.name
    # The same decoding and recorded normalisation; a run on Parquet shards of images records its source's.
    if source in ("image_folder", "image_shards") or "image" in predictor.preprocessing:
        from mlrun.prediction.images import read_images

        return read_images(path, predictor)
    if source in ("jsonl_text", "jsonl_shards"):  # the same fields and recorded tokenizer
        from mlrun.prediction.texts import read_texts

        return read_texts(path, predictor)
    if source in ("csv", "parquet"):
        from mlrun.prediction.tables import read_table

        return read_table(path, predictor)
    # Rows of features, or of an array source's samples flattened in row-major order (npz / npy images
    # as stored; digits as_image records its own scale and shape).
    flat_rows = len(predictor.meta.input_shape) == 1 or "reshape" in predictor.preprocessing or source in ARRAYS
    if flat_rows and predictor.meta.vocab_size is None:
        from mlrun.prediction.tables import read_feature_columns

        return read_feature_columns(path, predictor)
    if source == "parquet_shards" and predictor.meta.pixel_mean is not None:  # images, their decoding unrecorded
        raise UsageError(
            f"'{predictor.weights.parent}' trained on images in Parquet shards that an older mlrun prepare wrote "
            "without the source's decoding (size, mode, normalisation), so new image files cannot be prepared as "
            "they were: prepare the source again into a new --out and train on those shards"
        )
    raise UsageError(
        f"mlrun predict reads tables, image folders and JSON Lines texts; data source '{source}' "
        f"(inputs of shape {predictor.meta.input_shape}) has no reader for new files yet"
    )
