"""Images for `mlrun predict`: decoded, sized and normalised exactly as the run's image_folder did.

INPUT is one image, a folder of images, or a folder of class sub-folders (then the sub-folder
names are the labels and the file is scored). When the run resized (data.size), new images are
resized the same way; when it kept sizes, an image of another size stops with its file name.
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
    settings = predictor.config.data.settings
    resize = settings.get("size") is not None  # the run resized every image to data.size
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
    dataset = ArrayDataset(torch.from_numpy(np.stack(pixels)), targets, Normalize(image["mean"], image["std"]))
    return Inputs(dataset, [{"file": str(file)} for file in files], labels is not None)
