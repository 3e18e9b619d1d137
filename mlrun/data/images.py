"""`image_folder`: one sub-folder per class of PNG/JPEG files, decoded with Pillow, resized.

With `cache: true` (the default) every image is decoded once, in threads, into one uint8 tensor held
in memory (4x smaller than floats) and batches are normalised as they are drawn: no decoding in the
training loop at all. `cache: false` decodes each sample when it is loaded, for folders too large to
hold; give the loader workers then (`data.num_workers: auto`).

Normalisation uses the given mean/std or statistics computed on the training split, and is written
into the run's preprocessing so eval and exported models prepare images the same way.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field, PositiveInt
from torch.utils.data import Dataset

from mlrun.data.bundle import ArrayDataset, DataMeta, DatasetBundle
from mlrun.data.splits import ValFraction, draw_per_class, encode_labels, split_indices
from mlrun.errors import UsageError
from mlrun.registry import datasets

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
STATS_SAMPLE = 2000  # images enough for mean and std to three digits


class Normalize:
    """uint8 pixels (..., C, H, W) -> (pixels / 255 - mean) / std, per channel. Picklable for workers."""

    def __init__(self, mean: list[float], std: list[float]):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() / 255.0 - self.mean) / self.std


def images_by_class(folder: Path) -> tuple[list[Path], list[str]]:
    """The image files of each class sub-folder of `folder` (sorted), and each one's class: its folder's name.

    Shared by training (`image_folder`) and `mlrun predict` on a labelled folder.
    """
    files, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in EXTENSIONS:
                files.append(file)
                labels.append(class_dir.name)
    return files, labels


def _list_images(root: str, key: str) -> tuple[list[Path], np.ndarray]:
    folder = Path(root)
    if not folder.is_dir():
        raise UsageError(f"{key}: folder '{root}' not found (paths are relative to {Path.cwd()}).")
    files, labels = images_by_class(folder)
    if not files:
        raise UsageError(
            f"{key}: '{root}' holds no images: expected one sub-folder per class with "
            f"{', '.join(EXTENSIONS)} files, e.g. {root}/cat/001.png."
        )
    return files, np.array(labels)


def image_description(shape, classes: list[str], decoder, mean: list[float], std: list[float]):
    """(DataMeta, preprocessing record) of an image classification source: what eval, predict and export
    read to prepare new images as training did. Shared by `image_folder` and `image_shards`."""
    meta = DataMeta(
        task="classification",
        input_shape=tuple(int(d) for d in shape),
        num_classes=len(classes),
        pixel_mean=tuple(mean),
        pixel_std=tuple(std),
    )
    preprocessing = {
        "image": {"size": list(shape[1:]), "mode": decoder.mode, "scale": 1 / 255.0, "mean": mean, "std": std},
        "classes": classes,
    }
    return meta, preprocessing


class _Decoder:
    """Opens one file as a (C, H, W) uint8 array in the configured mode and size; None when corrupt."""

    def __init__(self, size: tuple[int, int] | None, grayscale: bool):
        self.size, self.mode = size, "L" if grayscale else "RGB"

    def __call__(self, file: Path) -> np.ndarray | None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as image:
                image = image.convert(self.mode)
                if self.size is not None and image.size != (self.size[1], self.size[0]):
                    image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                pixels = np.array(image, dtype=np.uint8)  # a writable copy
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    def shape(self, file: Path) -> tuple[int, int, int] | None:
        """The (C, H, W) the file decodes to, from its header and an integrity check; None when corrupt."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as image:
                width, height = image.size
                image.verify()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None
        height, width = self.size or (height, width)
        return (1 if self.mode == "L" else 3, height, width)


def _usable(shapes: list, files: list[Path], skip_corrupt: bool, key: str) -> list[int]:
    """Indices of decodable files; corrupt ones are an error, or skipped and counted; shapes must agree."""
    bad = [i for i, shape in enumerate(shapes) if shape is None]
    if bad and not skip_corrupt:
        raise UsageError(
            f"{key}: {len(bad)} images cannot be decoded (first: '{files[bad[0]]}'); remove them or set "
            "data.skip_corrupt: true to skip and count them."
        )
    if bad:
        print(f"mlrun: data: skipped {len(bad)} images that cannot be decoded (data.skip_corrupt)", flush=True)
    kept = [i for i, shape in enumerate(shapes) if shape is not None]
    if not kept:
        raise UsageError(f"{key}: none of the {len(files)} images can be decoded.")
    first = shapes[kept[0]]
    odd = next((i for i in kept if shapes[i] != first), None)
    if odd is not None:
        raise UsageError(
            f"{key}: images of mixed shapes: '{files[kept[0]]}' is {first}, '{files[odd]}' is "
            f"{shapes[odd]} (C, H, W); set data.size to resize them all."
        )
    return kept


class ImageFiles(Dataset):
    """Decodes each sample when loaded (`cache: false`): memory stays flat, workers do the decoding."""

    def __init__(self, files: list[Path], targets: torch.Tensor, decoder: _Decoder, prepare: Normalize):
        self.files, self.targets, self.decoder, self.prepare = files, targets, decoder, prepare

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.decoder(self.files[index])
        if pixels is None:
            raise UsageError(f"data: image '{self.files[index]}' can no longer be decoded.")
        return self.prepare(torch.from_numpy(pixels)), self.targets[index]

    def fingerprint(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        for file, target in zip(self.files, self.targets.tolist()):  # class folder and name: the same data
            # copied elsewhere (a node's local disk on another allocation) keeps its fingerprint
            digest.update(f"{file.parent.name}/{file.name}:{file.stat().st_size}:{target}".encode())
        return digest.hexdigest()[:16]


def _channel_stats(pixels: np.ndarray) -> tuple[list[float], list[float]]:
    values = pixels.astype(np.float64) / 255.0
    mean = values.mean(axis=(0, 2, 3))
    std = values.std(axis=(0, 2, 3))
    std[std == 0] = 1.0
    return mean.round(6).tolist(), std.round(6).tolist()


def _recorded_settings(preprocessing: dict) -> dict:
    """The normalisation a trained run keeps when its data is rebuilt on other folders (eval, predict)."""
    image = preprocessing.get("image") or {}
    return {"mean": image["mean"], "std": image["std"]} if "mean" in image else {}


@datasets.register("image_folder", recorded_settings=_recorded_settings)
def image_folder(
    seed: int,
    /,
    *,
    root: str,
    val_root: str | None = None,
    val_fraction: ValFraction = 0.2,
    size: PositiveInt | list[PositiveInt] | None = None,
    grayscale: bool = False,
    mean: list[float] | None = None,
    std: list[Annotated[float, Field(gt=0.0)]] | None = None,
    cache: bool = True,
    skip_corrupt: bool = False,
    train_per_class: PositiveInt | None = None,
) -> DatasetBundle:
    """Images in one sub-folder per class (PNG, JPEG, BMP, GIF, WebP), decoded with Pillow.

    Args:
        root: the folder of class sub-folders.
        val_root: a second folder of the same classes used as the validation split (instead of val_fraction).
        val_fraction: share of images held out for validation (stratified by class).
        size: resize every image to size x size, or [height, width]; default keep sizes (they must all match).
        grayscale: one channel (L) instead of three (RGB).
        mean: per-channel mean of pixels in [0, 1] to normalise with; default computed on the training split.
        std: per-channel standard deviation to normalise with; default computed on the training split.
        cache: decode every image once into memory (uint8); false decodes per sample at load time.
        skip_corrupt: skip (and count) images that cannot be decoded instead of stopping.
        train_per_class: keep only this many training images of each class, drawn by the seed (few-shot); the
            default mean and std are theirs; validation stays whole.
    """
    if (mean is None) != (std is None):
        raise UsageError("data.mean and data.std: give both or neither (neither computes them).")
    hw = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    if hw is not None and len(hw) != 2:
        raise UsageError(f"data.size: give one number or [height, width], got {size}.")
    decoder = _Decoder(hw, grayscale)
    files, labels = _list_images(root, "data.root")
    if val_root:
        val_files, val_labels = _list_images(val_root, "data.val_root")
        train_idx, val_idx = np.arange(len(files)), len(files) + np.arange(len(val_files))
        files, labels = files + val_files, np.concatenate([labels, val_labels])
    else:
        train_idx, val_idx = split_indices(len(files), val_fraction, seed, labels)
    y_train, y_val, classes = encode_labels(labels[train_idx], labels[val_idx], "data.val_root")

    with ThreadPoolExecutor() as pool:  # Pillow releases the GIL while decoding
        decoded = list(pool.map(decoder if cache else decoder.shape, files))
    shapes = [None if d is None else tuple(d.shape) for d in decoded] if cache else decoded
    kept = set(_usable(shapes, files, skip_corrupt, "data.root"))
    keep_train = [i for i, f in enumerate(train_idx) if f in kept]
    keep_val = [i for i, f in enumerate(val_idx) if f in kept]
    train_idx, val_idx, y_train, y_val = train_idx[keep_train], val_idx[keep_val], y_train[keep_train], y_val[keep_val]
    if train_per_class is not None:
        rows = draw_per_class(np.asarray(classes)[y_train], train_per_class, seed)  # errors name the folders
        train_idx, y_train = train_idx[rows], y_train[rows]
    shape = shapes[min(kept)]
    if cache:
        train_pixels = np.stack([decoded[i] for i in train_idx])
        val_pixels = np.stack([decoded[i] for i in val_idx]) if len(val_idx) else np.zeros((0, *shape), np.uint8)
    if mean is None:  # statistics of the training split; per-sample decoding decodes a sample of it for them
        sample = (
            train_pixels[:STATS_SAMPLE] if cache else np.stack([decoder(files[i]) for i in train_idx[:STATS_SAMPLE]])
        )
        mean, std = _channel_stats(sample)
    if len(mean) != shape[0] or len(std) != shape[0]:
        raise UsageError(f"data.mean and data.std: need {shape[0]} values (one per channel), got {len(mean)}.")
    normalize = Normalize(mean, std)
    to_long = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    if cache:
        train = ArrayDataset(torch.from_numpy(train_pixels), to_long(y_train), normalize)
        val = ArrayDataset(torch.from_numpy(val_pixels), to_long(y_val), normalize)
    else:
        train = ImageFiles([files[i] for i in train_idx], to_long(y_train), decoder, normalize)
        val = ImageFiles([files[i] for i in val_idx], to_long(y_val), decoder, normalize)
    meta, preprocessing = image_description(shape, classes, decoder, mean, std)
    if len(kept) < len(files):
        preprocessing["skipped_corrupt"] = len(files) - len(kept)
    return DatasetBundle(train, val, meta, preprocessing=preprocessing)
