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

`--format` chooses the shards: `parquet` (the default, above), `image_tar` (an image source's samples as
PNG files with `.cls` labels in webdataset tars, read by `image_shards` with the source's normalisation)
or `jsonl` (a `jsonl_text` source's records, split as it splits them, read by `jsonl_shards`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlrun.config.load import load_config
from mlrun.data.parquet_shards import META_KEY
from mlrun.errors import UsageError

FORMATS = ("parquet", "image_tar", "jsonl")


def run_prepare(
    path: Path, overrides: list[str], out: Path, rows_per_shard: int, row_group: int, shard_format: str = "parquet"
) -> None:
    if shard_format not in FORMATS:
        raise UsageError(f"--format: '{shard_format}' is not one of {', '.join(FORMATS)}.")
    config = load_config(path, overrides)
    # The seed that splits the data (data.seed, default the run's): the prepared split is training's.
    settings = {"source": config.data.model_dump(mode="json"), "seed": config.data.seed_for(config.seed)}
    settings |= {"rows_per_shard": rows_per_shard, "row_group": row_group}
    if shard_format != "parquet":  # parquet folders prepared before --format existed stay resumable
        settings["format"] = shard_format
    if shard_format == "jsonl":
        summary, reader = prepare_jsonl(config, out, settings)
    else:
        summary, reader = prepare_samples(config, out, settings, shard_format)
    (out / "prepare.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    trains_on_shards = write_config(config, out, reader)
    written = summary["splits"]
    print(
        f"mlrun: prepared {written['train']['rows']} train / {written['val']['rows']} val samples of "
        f"'{config.data.name}' into {out} ({written['train']['shards']} + {written['val']['shards']} shards)\n"
        f"next: mlrun train {trains_on_shards}"
    )


def start_folder(out: Path, settings: dict) -> None:
    """`out` empty, or holding an earlier prepare of the same settings (continued); else exit 2."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"mlrun prepare: --out {out} is a file; give a folder (new, or one prepare wrote)")
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


def prepare_samples(config, out: Path, settings: dict, shard_format: str) -> tuple[dict, dict]:
    """The source built as training builds it, each split written as Parquet or image tar shards;
    (prepare.json's record, the data settings that read the shards)."""
    from mlrun.data import shard_writers
    from mlrun.engine.build import build_data

    bundle = build_data(config.data, config.seed)
    meta = bundle.meta
    if meta.input_names is not None or meta.task == "lm":
        raise UsageError(
            f"mlrun prepare --format {shard_format}: dataset '{config.data.name}' gives token or named-tensor "
            f"batches, and this format writes array samples (tables, images, npz) only; {instead(config.data.name)}."
        )
    if shard_format == "image_tar":
        shard_writers.check_images(meta, config.data.name)
    start_folder(out, settings)
    per_shard, row_group = settings["rows_per_shard"], settings["row_group"]
    classes = (bundle.preprocessing or {}).get("classes")
    source = image_source(bundle.preprocessing, config.data.settings)
    written = {}
    for split in ("train", "val"):
        dataset, folder = getattr(bundle, split), out / split
        if shard_format == "image_tar":
            written[split] = shard_writers.write_image_tars(dataset, folder, meta, classes, per_shard)
        else:
            written[split] = write_split(dataset, folder, meta, per_shard, row_group, source)
    record = {**settings, "task": meta.task, "input_shape": list(meta.input_shape), "num_classes": meta.num_classes}
    record |= {"splits": written, "preprocessing": bundle.preprocessing}
    if shard_format == "image_tar":  # the source's normalisation, so the shards train on the same inputs
        reader = {"name": "image_shards", "grayscale": meta.input_shape[0] == 1}
        reader |= {"mean": list(meta.pixel_mean), "std": list(meta.pixel_std)}
        # The images were written resized; the size stays in the config so that predict resizes new images too.
        reader |= {"size": config.data.settings["size"]} if config.data.settings.get("size") else {}
    else:
        reader = {"name": "parquet_shards", "target": "label", "scale": "none"}  # the samples were written normalised
    return record, reader | {"dedup": False}  # written deduplicated; lazy shards cannot deduplicate


def instead(source: str) -> str:
    """What to do with a source that a --format cannot write: never another format that refuses it too."""
    if source == "jsonl_text":
        return "--format jsonl writes its records as JSON Lines shards"
    if source == "jsonl_shards":
        return (
            "its data are already JSON Lines shards, read lazily: train on them as they are (prepare makes such "
            "shards from a jsonl_text source)"
        )
    return "train on the source as it is (token files are already memory-mapped: text_lm)"


def prepare_jsonl(config, out: Path, settings: dict) -> tuple[dict, dict]:
    """A jsonl_text source's records, split as jsonl_text splits them, as JSON Lines shards."""
    from mlrun.data import shard_writers
    from mlrun.data.splits import encode_labels, split_indices
    from mlrun.data.text import keep_classes, read_jsonl
    from mlrun.data.tokenize import make_tokenizer
    from mlrun.registry import datasets

    if config.data.name != "jsonl_text":
        other = "--format parquet writes array samples (tables, images, npz) and image_tar images"
        raise UsageError(
            f"mlrun prepare --format jsonl: writes the records of a jsonl_text source, not of '{config.data.name}'; "
            f"{instead(config.data.name) if config.data.name in ('jsonl_shards', 'text_lm') else other}."
        )
    source = {s.name: s.default for s in datasets.settings("jsonl_text")} | config.data.settings
    fields = (source["text_field"], source["label_field"])

    def records(key: str) -> tuple[list[str], object]:
        return keep_classes(read_jsonl(source[key], f"data.{key}", *fields), source["classes"])

    texts, labels = records("path")
    if source["val_path"]:
        val_texts, val_labels = records("val_path")
    else:  # jsonl_text's own split (text.text_bundle): the same records train and validate
        train_idx, val_idx = split_indices(len(texts), source["val_fraction"], settings["seed"], labels)
        val_texts, val_labels = [texts[i] for i in val_idx], labels[val_idx]
        texts, labels = [texts[i] for i in train_idx], labels[train_idx]
    splits = {"train": _records(texts, labels, fields), "val": _records(val_texts, val_labels, fields)}
    cleaning = {}
    if config.data.dedup:  # exact duplicate records, first copy kept (the shards then need no dedup)
        for split, records in splits.items():
            splits[split] = _unique(records)
            cleaning[split] = len(records) - len(splits[split])
    start_folder(out, settings)
    written = {
        split: shard_writers.write_jsonl_shards(records, out / split, settings["rows_per_shard"])
        for split, records in splits.items()
    }
    classes = encode_labels(labels, val_labels, "data.val_path")[2]
    tokenizer = make_tokenizer(source["tokenizer"], texts, "data.tokenizer", pad=True)
    preprocessing = {"tokenizer": tokenizer.describe(), "max_length": source["max_length"], "classes": classes}
    record = {**settings, "task": "classification", "input_shape": [source["max_length"]]}
    record |= {"num_classes": len(classes), "splits": written, "preprocessing": preprocessing}
    if cleaning:
        record["duplicates_dropped"] = cleaning
    reader = {"name": "jsonl_shards", "text_field": fields[0], "label_field": fields[1]}
    reader |= {"tokenizer": source["tokenizer"], "max_length": source["max_length"], "dedup": False}
    return record, reader


def _records(texts: list[str], labels, fields: tuple[str, str]) -> list[dict]:
    return [{fields[0]: text, fields[1]: label.item()} for text, label in zip(texts, labels)]


def _unique(records: list[dict]) -> list[dict]:
    seen, kept = set(), []
    for record in records:
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def write_config(config, out: Path, reader: dict) -> Path:
    """The config with its data section reading the shards: the source's own settings swapped for
    `reader`'s, the batching and augmentation settings kept."""
    import yaml

    from mlrun.registry import datasets

    resolved = config.model_dump(mode="json")
    source_settings = {setting.name for setting in datasets.settings(config.data.name)}
    data = {key: value for key, value in resolved["data"].items() if key not in source_settings}
    folder = out.resolve()
    data |= {"path": str(folder / "train"), "val_path": str(folder / "val")} | reader
    resolved["data"] = data
    resolved["name"] = f"{config.name}_shards"  # its own run folder, beside the run on the source
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return path


def image_source(preprocessing: dict | None, settings: dict) -> dict:
    """What `mlrun predict` needs of an image source to read new image files for a run on its Parquet shards:
    its decoding (size, mode, statistics), whether it resized, and its class names (the shards hold class ids);
    {} for other sources, whose runs read tables of the shards' columns and labels."""
    image = (preprocessing or {}).get("image")
    if not image:
        return {}
    return {"image": {**image, "resize": settings.get("size") is not None}, "classes": preprocessing.get("classes")}


def write_split(dataset, folder: Path, meta, rows_per_shard: int, row_group: int, source: dict) -> dict:
    """Write `dataset` as Parquet shards in `folder`, skipping shards an earlier, interrupted prepare completed;
    `source` (image_source) joins the shape and pixel statistics in the shards' metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlrun.data.bundle import fetch_batch
    from mlrun.data.shard_writers import write_resumable

    def write(path: Path, samples: range) -> None:
        inputs, labels = fetch_batch(dataset, samples)
        values = inputs.reshape(len(inputs), -1).float().numpy()
        columns = {f"x{i}": values[:, i] for i in range(values.shape[1])}
        labels = labels.numpy()
        if labels.ndim > 1:
            raise UsageError("mlrun prepare: targets of more than one value per sample cannot be written yet.")
        table = pa.table({**columns, "label": labels.astype(np.int64 if meta.task == "classification" else np.float32)})
        stored = {"input_shape": meta.input_shape, "pixel_mean": meta.pixel_mean, "pixel_std": meta.pixel_std}
        stored |= source
        table = table.replace_schema_metadata({META_KEY: json.dumps(stored).encode()})
        pq.write_table(table, path, row_group_size=row_group)

    count = write_resumable(folder, len(dataset), rows_per_shard, ".parquet", write)
    return {"rows": len(dataset), "shards": count, "path": str(folder)}
