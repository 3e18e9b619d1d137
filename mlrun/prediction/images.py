"""Images for `mlrun predict`: decoded, sized and normalised exactly as the run's image_folder did.

INPUT is one image, a folder of images, or a folder of class sub-folders (then the sub-folder
names are the labels and the file is scored). When the run resized (data.size), new images are
resized the same way; when it kept sizes, an image of another size stops with its file name.
A run on Parquet shards that `mlrun prepare` wrote from images records its source's decoding
(whether it resized included) and standardises the pixels as its shards' columns after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlrun.data.images import EXTENSIONS, Normalize, _Decoder, images_by_class
from mlrun.errors import UsageError
from mlrun.prediction.prepared import Inputs
from mlrun.prediction.tables import labels_to_targets


def list_images(path: Path) -> tuple[list[Path], list[str] | None]:
    """(files, labels or None): class sub-folders give labels; loose files and single files do not."""
    if path.is_file():
        return [path], None
    loose = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in EXTENSIONS)
    folders = sorted(d for d in path.iterdir() if d.is_dir())
    if loose or not folders:
        if not loose:
            raise UsageError(f"INPUT: '{path}' holds no images ({', '.join(EXTENSIONS)})")
        return loose, None
    files, labels = images_by_class(path)
    if not files:
        raise UsageError(f"INPUT: the sub-folders of '{path}' hold no images ({', '.join(EXTENSIONS)})")
    return files, labels


def read_images(path: Path, predictor) -> Inputs:
    import torch

    from mlrun.data.bundle import ArrayDataset

    image = predictor.preprocessing.get("image")
    if not image:
        raise UsageError(f"{predictor.weights.parent}: the run recorded no image preprocessing; re-export it")
    # The run resized every image to data.size; a run on prepared shards recorded whether its source did.
    resize = image.get("resize", predictor.config.data.settings.get("size") is not None)
    decoder = _Decoder(tuple(image["size"]) if resize else None, image["mode"] == "L")
    expected = tuple(predictor.meta.input_shape)
    files, labels = list_images(path)
    pixels = []
    for file in files:
        decoded = decoder(file)
        if decoded is None:
            raise UsageError(f"INPUT: '{file}' cannot be decoded as an image")
        if tuple(decoded.shape) != expected:
            raise UsageError(
                f"INPUT: '{file}' is {tuple(decoded.shape)} (C, H, W); the run was trained on {expected} "
                "without resizing (data.size unset): resize the image, or retrain with data.size"
            )
        pixels.append(decoded)
    targets = (
        labels_to_targets(np.array(labels), predictor, path, "the class sub-folders")
        if labels is not None
        else torch.zeros(len(files), dtype=torch.long)
    )
    # uint8 pixels normalised per batch, as the training data was (data/images.py).
    prepare = Normalize(image["mean"], image["std"])
    if "standardize" in predictor.preprocessing:  # parquet_shards: then per column (identity with scale: none)
        prepare = Standardized(prepare, predictor.preprocessing["standardize"], expected)
    dataset = ArrayDataset(torch.from_numpy(np.stack(pixels)), targets, prepare)
    return Inputs(dataset, [{"file": str(file)} for file in files], labels is not None)


class Standardized:
    """Normalised pixels standardised per value, as parquet_shards standardises its columns x0, x1, ... (the
    pixels of (C, H, W) in row-major order) with the statistics it fitted."""

    def __init__(self, normalize: Normalize, statistics: dict, shape: tuple[int, ...]):
        import torch

        self.normalize = normalize
        self.mean = torch.tensor(statistics["mean"], dtype=torch.float64).view(shape)
        self.std = torch.tensor(statistics["std"], dtype=torch.float64).view(shape)

    def __call__(self, pixels):
        # float64 then float32, as the shards' reader computes it
        return ((self.normalize(pixels).double() - self.mean) / self.std).float()
