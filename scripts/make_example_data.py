"""Writes the example data files under configs/data/ from scikit-learn's bundled datasets.

    python scripts/make_example_data.py [FOLDER]     (default: configs/data)

- wine_regions.csv: the wine table plus a categorical `region` column and missing `magnesium` values
  (for configs/tabular_csv.yaml: imputation, one-hot encoding, feature selection);
- digits_png/<digit>/<n>.png: the 8x8 digits as grayscale PNG files (configs/digits_images.yaml);
- digits_ascii.jsonl: each digit drawn as 64 characters of ASCII art, labelled with the digit
  (configs/text_classification.yaml).

Deterministic: running it again rewrites identical files.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_wine

DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "data"
RAMP = " .:-=+*#%@"  # ten shades, dark to bright


def wine_csv(folder: Path, rng: np.random.Generator) -> None:
    wine = load_wine()
    regions = np.array(["coast", "hills", "valley"])
    # The region leans towards the cultivar, so the categorical column carries some signal.
    region = np.where(rng.random(len(wine.target)) < 0.6, regions[wine.target], rng.choice(regions, len(wine.target)))
    missing = rng.random(len(wine.target)) < 0.1
    names = [n.replace("/", "_") for n in wine.feature_names]
    with open(folder / "wine_regions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*names, "region", "cultivar"])
        for row, reg, miss, target in zip(wine.data, region, missing, wine.target):
            values = [f"{v:g}" for v in row]
            if miss:
                values[names.index("magnesium")] = ""
            writer.writerow([*values, reg, wine.target_names[target]])


def digits_png(folder: Path, digits) -> None:
    folder = folder / "digits_png"
    shutil.rmtree(folder, ignore_errors=True)
    for index, (image, target) in enumerate(zip(digits.images, digits.target)):
        (folder / str(target)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15).astype(np.uint8), mode="L").save(folder / str(target) / f"{index:04d}.png")


def digits_jsonl(folder: Path, digits) -> None:
    with open(folder / "digits_ascii.jsonl", "w") as file:
        for image, target in zip(digits.images, digits.target):
            art = "\n".join("".join(RAMP[int(v * 9 / 16)] for v in row) for row in image)
            file.write(json.dumps({"text": art, "label": str(target)}) + "\n")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    wine_csv(out, np.random.default_rng(0))
    digits_png(out, digits)
    digits_jsonl(out, digits)
    print(f"wrote {out}/wine_regions.csv, digits_png/, digits_ascii.jsonl")
