"""Shards written by `mlrun prepare` for the sharded sources: tar shards of PNG images with labels
(`image_shards`) and JSON Lines shards (`jsonl_shards`); the Parquet writer is in commands/prepare.py.

Every writer goes through `write_resumable`: a shard is written under a temporary name and renamed when
complete, and a shard already there is skipped, so a prepare that was interrupted continues where it
stopped when run again.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlrun.errors import UsageError


def write_resumable(folder: Path, total: int, per_shard: int, suffix: str, write: Callable[[Path, range], None]) -> int:
    """`write(temporary path, sample range)` for each shard of `per_shard` samples not yet written; shard count."""
    folder.mkdir(parents=True, exist_ok=True)
    count = -(-total // per_shard)
    for shard in range(count):
        target = folder / f"part-{shard:05d}{suffix}"
        if target.exists():
            print(f"mlrun: {folder.name} shard {shard + 1}/{count}: already written", flush=True)
            continue
        samples = range(shard * per_shard, min(total, (shard + 1) * per_shard))
        temporary = target.with_name(f".{target.name}.tmp")
        write(temporary, samples)
        temporary.rename(target)
        print(f"mlrun: {folder.name} shard {shard + 1}/{count}: {len(samples)} samples", flush=True)
    return count


def image_pixels(inputs, meta) -> np.ndarray:
    """Normalised image batches back to (N, C, H, W) uint8: the inverse of images.Normalize, exact for
    pixels that were uint8 (float32 rounding is far below half a grey level)."""
    mean = np.asarray(meta.pixel_mean, dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(meta.pixel_std, dtype=np.float64).reshape(1, -1, 1, 1)
    values = (inputs.double().numpy() * std + mean) * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def check_images(meta, source: str) -> None:
    shape = meta.input_shape
    if meta.pixel_mean is None or len(shape) != 3 or shape[0] not in (1, 3) or meta.input_names is not None:
        raise UsageError(
            f"mlrun prepare --format image_tar: dataset '{source}' does not give normalised images (samples of "
            f"shape {tuple(shape)}, no pixel statistics); use --format parquet for it."
        )


def write_image_tars(dataset, folder: Path, meta, classes: list | None, per_shard: int) -> dict:
    """`dataset`'s samples as webdataset tars: `<n>.png` (lossless, as the model saw it before
    normalisation) and `<n>.cls` (the class name, so class ids come out in the source's order)."""
    from PIL import Image

    from mlrun.data.bundle import fetch_batch

    def write(path: Path, samples: range) -> None:
        inputs, targets = fetch_batch(dataset, samples)
        pixels = image_pixels(inputs, meta)
        with tarfile.open(path, "w") as tar:
            for number, image, target in zip(samples, pixels, targets.tolist()):
                png = io.BytesIO()
                Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(png, "PNG")
                label = str(classes[target] if classes else target).encode()
                for name, data in ((f"{number:08d}.png", png.getvalue()), (f"{number:08d}.cls", label)):
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))

    count = write_resumable(folder, len(dataset), per_shard, ".tar", write)
    return {"rows": len(dataset), "shards": count, "path": str(folder)}


def write_jsonl_shards(records: list[dict], folder: Path, per_shard: int) -> dict:
    """Records as JSON Lines shards of `per_shard` lines."""

    def write(path: Path, samples: range) -> None:
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(records[i], ensure_ascii=False) + "\n" for i in samples)

    count = write_resumable(folder, len(records), per_shard, ".jsonl", write)
    return {"rows": len(records), "shards": count, "path": str(folder)}
