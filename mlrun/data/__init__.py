"""Built-in datasets; importing the package registers them (registry `datasets`)."""

from mlrun.data import (  # noqa: F401
    arrays,
    hf_disk,
    image_shards,
    images,
    jsonl_shards,
    parquet_shards,
    sklearn_sets,
    synthetic,
    tabular,
    text,
    text_lm,
)
