"""`mlrun prepare CONFIG --out DIR`: the config's data, as built for training, written as Parquet shards.

    mlrun prepare configs/digits_images.yaml --out data/digits_shards
    mlrun train data/digits_shards/config.yaml      # the same config, its data read from the shards

Each split is written as it reaches the model (decoded, resized, normalised, encoded, deduplicated:
whatever the source's preprocessing does), one float32 column per input value, in shards of
`--rows-per-shard` rows and row groups of `--row-group` rows, with the sample shape in the shards'
metadata so `parquet_shards` gives the model the same shape. The split is the source's own, so
training from the shards sees the same samples. `DIR/prepare.json` holds what was written and the
source's preprocessing (statistics, classes); `DIR/config.yaml` is the config with its data section
swapped for `parquet_shards` over the shards (batching and augmentation kept). A shard is written
under a temporary name and renamed when complete, so an interrupted prepare continues where it
stopped when run again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlrun.config.load import load_config
from mlrun.data.parquet_shards import META_KEY
from mlrun.errors import UsageError


def run_prepare(path: Path, overrides: list[str], out: Path, rows_per_shard: int, row_group: int) -> None:
    config = load_config(path, overrides)
    from mlrun.engine.build import build_data

    bundle = build_data(config.data, config.seed)
    meta = bundle.meta
    if meta.input_names is not None or meta.task == "lm":
        raise UsageError(
            f"mlrun prepare: dataset '{config.data.name}' gives token or named-tensor batches; prepare writes "
            "array samples (tables, images, npz) only. Token files are already memory-mapped (text_lm)."
        )
    settings = {"source": config.data.model_dump(mode="json"), "seed": config.seed}
    settings |= {"rows_per_shard": rows_per_shard, "row_group": row_group}
    started = out / ".prepare-settings.json"
    if started.exists() and json.loads(started.read_text()) != settings:
        raise UsageError(
            f"mlrun prepare: {out} holds shards prepared from other settings ({started}); give another --out, "
            "or delete that folder to prepare it again."
        )
    if not started.exists() and out.exists() and any(out.iterdir()):
        raise UsageError(f"mlrun prepare: {out} is not empty and was not written by mlrun prepare; give another --out.")
    out.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps(settings, sort_keys=True))
    written = {}
    for split in ("train", "val"):
        written[split] = write_split(getattr(bundle, split), out / split, meta, rows_per_shard, row_group)
    summary = {
        **settings,
        "task": meta.task,
        "input_shape": list(meta.input_shape),
        "num_classes": meta.num_classes,
        "splits": written,
        "preprocessing": bundle.preprocessing,
    }
    (out / "prepare.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    trains_on_shards = write_config(config, out)
    print(
        f"mlrun: prepared {written['train']['rows']} train / {written['val']['rows']} val samples of "
        f"'{config.data.name}' into {out} ({written['train']['shards']} + {written['val']['shards']} shards)\n"
        f"next: mlrun train {trains_on_shards}"
    )


def write_config(config, out: Path) -> Path:
    """The config with its data section reading the shards: the source's own settings swapped for
    parquet_shards', the batching and augmentation settings kept."""
    import yaml

    from mlrun.registry import datasets

    resolved = config.model_dump(mode="json")
    source_settings = {setting.name for setting in datasets.settings(config.data.name)}
    data = {key: value for key, value in resolved["data"].items() if key not in source_settings}
    folder = out.resolve()
    data |= {"name": "parquet_shards", "path": str(folder / "train"), "val_path": str(folder / "val")}
    data |= {"target": "label", "scale": "none"}  # the samples were written normalised
    resolved["data"] = data
    resolved["name"] = f"{config.name}_shards"  # its own run folder, beside the run on the source
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return path


def write_split(dataset, folder: Path, meta, rows_per_shard: int, row_group: int) -> dict:
    """Write `dataset` as shards in `folder`, skipping shards an earlier, interrupted prepare completed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlrun.data.bundle import fetch_batch

    folder.mkdir(parents=True, exist_ok=True)
    total = len(dataset)
    count = -(-total // rows_per_shard)
    for shard in range(count):
        target = folder / f"part-{shard:05d}.parquet"
        if target.exists():
            print(f"mlrun: {folder.name} shard {shard + 1}/{count}: already written", flush=True)
            continue
        inputs, labels = fetch_batch(dataset, range(shard * rows_per_shard, min(total, (shard + 1) * rows_per_shard)))
        values = inputs.reshape(len(inputs), -1).float().numpy()
        columns = {f"x{i}": values[:, i] for i in range(values.shape[1])}
        labels = labels.numpy()
        if labels.ndim > 1:
            raise UsageError("mlrun prepare: targets of more than one value per sample cannot be written yet.")
        table = pa.table({**columns, "label": labels.astype(np.int64 if meta.task == "classification" else np.float32)})
        stored = {"input_shape": meta.input_shape, "pixel_mean": meta.pixel_mean, "pixel_std": meta.pixel_std}
        table = table.replace_schema_metadata({META_KEY: json.dumps(stored).encode()})
        temporary = target.with_name(f".{target.name}.tmp")
        pq.write_table(table, temporary, row_group_size=row_group)
        temporary.rename(target)
        print(f"mlrun: {folder.name} shard {shard + 1}/{count}: {len(labels)} rows", flush=True)
    return {"rows": total, "shards": count, "path": str(folder)}
