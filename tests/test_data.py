"""The data pipeline: every source, splits, preprocessing, augmentation, dedup, loaders, bad data."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mlrun.config.schema import DataSpec
from mlrun.data.bundle import DataMeta
from mlrun.engine.batches import resolve_workers
from mlrun.errors import UsageError
from mlrun.registry import augmentations, datasets
from tests.conftest import REPO, read_jsonl, run_cli, tiny_config, train_run, write_config

# --- files the tests write ------------------------------------------------------------------------


def write_table(folder, rows: int = 120, missing: bool = True):
    """A CSV with a numeric, a categorical and a missing-value column; the target follows feature a."""
    import pandas as pd

    rng = np.random.default_rng(0)
    a = rng.normal(size=rows)
    frame = pd.DataFrame(
        {
            "a": a,
            "b": rng.normal(size=rows),
            "constant": np.ones(rows),
            "colour": rng.choice(["red", "green", "blue"], rows),
            "target": np.where(a > 0, "yes", "no"),
        }
    )
    if missing:
        frame.loc[[3, 7, 11], "b"] = np.nan
    path = folder / "table.csv"
    frame.to_csv(path, index=False)
    return path, frame


def write_images(folder, per_class: int = 20, classes: int = 3, size: int = 8):
    """Class k images: a bright bar at row 2k (learnable), with noise."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (folder / f"class{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size), dtype=np.uint8)
            pixels[2 * k] = 250
            Image.fromarray(pixels, mode="L").save(folder / f"class{k}" / f"{i:03d}.png")
    return folder


def build(name: str, seed: int = 0, **settings):
    return datasets.build(name, seed, **settings)


# --- sources --------------------------------------------------------------------------------------


def test_csv_preprocessing_is_fitted_on_the_training_split_only(tmp_path):
    path, frame = write_table(tmp_path)
    bundle = build("csv", path=str(path), target="target", impute="median")
    train_rows = len(bundle.train)
    assert train_rows + len(bundle.val) == len(frame) and bundle.meta.num_classes == 2
    # 2 scaled numeric columns + constant + 3 one-hot colours.
    assert bundle.meta.input_shape == (6,)
    scaler = bundle.transform.named_steps["columns"].named_transformers_["numeric"][-1]
    train_a = bundle.transform.named_steps["columns"].named_transformers_["numeric"][0]
    assert scaler.n_samples_seen_ == train_rows and train_a.statistics_.shape == (3,)
    assert bundle.train.inputs[:, 0].mean().abs() < 1e-5  # standardised with training statistics
    assert bundle.preprocessing["classes"] == ["no", "yes"]


@pytest.mark.parametrize(
    ("select", "width"),
    [
        ([{"method": "variance"}], 5),  # the constant column goes
        ([{"method": "kbest", "k": 2}], 2),
        ([{"method": "kbest", "k": 3, "score": "mutual_info"}], 3),
        ([{"method": "rfe", "k": 2}], 2),
        ([{"method": "pca", "components": 3}], 3),
        ([{"method": "variance"}, {"method": "pca", "components": 0.99}], None),
    ],
)
def test_feature_selection_methods(tmp_path, select, width):
    path, _ = write_table(tmp_path)
    bundle = build("csv", path=str(path), target="target", impute="mean", select=select)
    if width is None:
        assert 1 <= bundle.meta.input_shape[0] <= 5
    else:
        assert bundle.meta.input_shape == (width,)


def test_l1_selection_keeps_the_informative_feature(tmp_path):
    path, _ = write_table(tmp_path)
    bundle = build("csv", path=str(path), target="target", impute="mean", select=[{"method": "l1", "c": 0.05}])
    assert 1 <= bundle.meta.input_shape[0] < 6


def test_parquet_and_explicit_validation_file(tmp_path):
    _, frame = write_table(tmp_path, missing=False)
    frame.iloc[:90].to_parquet(tmp_path / "train.parquet")
    frame.iloc[90:].to_parquet(tmp_path / "val.parquet")
    bundle = build(
        "parquet", path=str(tmp_path / "train.parquet"), val_path=str(tmp_path / "val.parquet"), target="target"
    )
    assert (len(bundle.train), len(bundle.val)) == (90, 30)


def test_a_glob_of_parquet_shards_reads_every_shard(tmp_path):
    _, frame = write_table(tmp_path, missing=False)
    (tmp_path / "shards").mkdir()
    for i in range(4):  # 30 rows a shard
        frame.iloc[30 * i : 30 * (i + 1)].to_parquet(tmp_path / "shards" / f"part-{i}.parquet")
    bundle = build("parquet", path=str(tmp_path / "shards" / "*.parquet"), target="target", val_fraction=0.25)
    assert (len(bundle.train), len(bundle.val)) == (90, 30)
    frame.iloc[:30].drop(columns="b").to_parquet(tmp_path / "shards" / "part-9.parquet")
    with pytest.raises(UsageError, match="part-9.parquet' lacks b; every file .* must have the same columns"):
        build("parquet", path=str(tmp_path / "shards" / "*.parquet"), target="target")


@pytest.mark.parametrize("sep, named", [(";", "semicolon"), ("\t", "tab")])
def test_a_csv_with_another_delimiter_exits_2_naming_it_and_reads_with_data_delimiter(tmp_path, sep, named):
    """European Excel saves CSV with ';': read with ',' the file was one column, and the user was told
    "data.target: column 'target' is not in 'excel.csv'. Columns: a;b;constant;colour;target."."""
    _, frame = write_table(tmp_path, missing=False)
    frame.to_csv(tmp_path / "excel.csv", sep=sep, index=False)
    data = {"name": "csv", "path": "excel.csv", "target": "target"}
    fails(tmp_path, data, f"data.path: 'excel.csv' looks {named}-separated", f"data.delimiter: {json.dumps(sep)}")
    read = build("csv", path=str(tmp_path / "excel.csv"), target="target", delimiter=sep)
    same = build("csv", path=str(tmp_path / "table.csv"), target="target")
    assert torch.equal(read.train.inputs, same.train.inputs) and torch.equal(read.val.targets, same.val.targets)
    # predict reads new files with the run's delimiter, and names a file written with another one.
    run = train_run(tmp_path, tiny_config(name="excel", data={**data, "delimiter": sep}))
    assert run_cli("predict", run, "excel.csv", cwd=tmp_path).returncode == 0
    result = run_cli("predict", run, "table.csv", cwd=tmp_path)
    assert result.returncode == 2 and "INPUT: 'table.csv' looks comma-separated" in result.stderr, result.stderr
    fails(tmp_path, {"name": "parquet", "path": "excel.csv", "target": "target", "delimiter": sep}, "delimiter")


def test_decimal_commas_exit_2_naming_the_column_and_read_as_numbers_with_data_decimal(tmp_path):
    """With data.delimiter ';' a European Excel file's numbers ('0,126') were text columns, one-hot encoded
    without a word; data.decimal reads them, in training and in predict."""
    _, frame = write_table(tmp_path, missing=False)
    frame.to_csv(tmp_path / "excel.csv", sep=";", decimal=",", index=False)
    data = {"name": "csv", "path": "excel.csv", "target": "target", "delimiter": ";"}
    fails(tmp_path, data, "column 'a' of ", "decimal comma", 'data.decimal: ","')
    read = build("csv", path=str(tmp_path / "excel.csv"), target="target", delimiter=";", decimal=",")
    same = build("csv", path=str(tmp_path / "table.csv"), target="target")
    assert torch.equal(read.train.inputs, same.train.inputs) and torch.equal(read.val.targets, same.val.targets)
    run = train_run(tmp_path, tiny_config(name="excel", data={**data, "decimal": ","}))
    predicted = run_cli("predict", run, "excel.csv", "--json", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    fails(tmp_path, {"name": "parquet", "path": "excel.csv", "target": "target", "decimal": ","}, "decimal")


def test_csv_shards_with_other_columns_are_named_by_the_columns_that_differ(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    columns = [f"p{i}" for i in range(64)] + ["target"]  # 65 columns, as in sklearn's digits as a table
    (tmp_path / "shards").mkdir()
    for i in range(3):
        frame = pd.DataFrame(rng.integers(0, 16, size=(20, 65)), columns=columns)
        frame.rename(columns={"p5": "q5"} if i == 1 else {}).to_csv(tmp_path / "shards" / f"part-{i}.csv", index=False)
    with pytest.raises(UsageError) as error:
        build("csv", path=str(tmp_path / "shards" / "*.csv"), target="target")
    message = str(error.value)
    assert "part-1.csv' lacks p5 and has q5" in message and "part-0.csv" in message
    assert "p63" not in message and len(message) < 600  # the differing columns, not both lists of 65


def test_a_glob_of_several_npz_files_exits_2_naming_them(tmp_path):
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", x=np.zeros((10, 2), np.float32), y=np.arange(10) % 2)
    with pytest.raises(UsageError, match=r"data.path: '.*\*.npz' matches 2 files .*a.npz.*reads one file"):
        build("npz", path=str(tmp_path / "*.npz"))


def test_a_missing_npz_array_names_the_setting_that_named_it(tmp_path):
    """features_key: X was reported under data.path (a user trial)."""
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 2), np.float32), y=np.arange(10) % 2)
    with pytest.raises(UsageError, match=r"^data.features_key: '.*d.npz' has no array 'X'\. Arrays: x, y"):
        build("npz", path=str(tmp_path / "d.npz"), features_key="X")


def test_npz_and_npy_keep_sample_shapes_and_stratify(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2, 3, 3)).astype(np.float32)
    y = np.repeat([0, 1, 2, 3], [20, 40, 60, 80])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    bundle = build("npz", path=str(tmp_path / "d.npz"), val_fraction=0.25)
    assert bundle.meta.input_shape == (2, 3, 3) and bundle.meta.num_classes == 4
    assert torch.bincount(bundle.val.targets).tolist() == [5, 10, 15, 20]  # every class keeps its share
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", rng.normal(size=200).astype(np.float32))
    regression = build("npy", features=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"))
    assert regression.meta.task == "regression" and regression.meta.output_dim == 1


def test_image_folder_cached_and_lazy_give_the_same_samples(tmp_path):
    root = write_images(tmp_path / "images")
    cached = build("image_folder", root=str(root), grayscale=True, size=12)
    lazy = build("image_folder", root=str(root), grayscale=True, size=12, cache=False)
    assert cached.meta.input_shape == (1, 12, 12) and cached.meta.num_classes == 3
    for index in (0, 5, len(cached.val) - 1):
        assert torch.equal(cached.val[index][0], lazy.val[index][0])
    train = torch.stack([cached.train[i][0] for i in range(len(cached.train))])
    assert abs(train.mean()) < 1e-4 and abs(train.std() - 1) < 1e-2  # normalised with training statistics
    assert resolve_workers(DataSpec(name="x", num_workers="auto"), cached.train) == 0
    assert resolve_workers(DataSpec(name="x", num_workers="auto"), lazy.train) >= 1


def test_jsonl_text_with_byte_char_and_tokenizer_file(tmp_path):
    records = [
        {"text": f"{'good' if i % 2 else 'bad'} film number {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)
    ]
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    byte = build("jsonl_text", path=str(path), max_length=16)
    assert byte.meta.vocab_size == 257 and byte.train.inputs["input_ids"].shape[1] == 16
    char = build("jsonl_text", path=str(path), tokenizer="char", max_length=32)
    assert char.meta.vocab_size < 40 and char.preprocessing["classes"] == ["neg", "pos"]
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        [r["text"] for r in records], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"])
    )
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    words = build("jsonl_text", path=str(path), tokenizer=str(tmp_path / "tokenizer.json"), max_length=8)
    assert words.meta.vocab_size == tokenizer.get_vocab_size()
    ids, mask = words.train.inputs["input_ids"], words.train.inputs["attention_mask"]
    assert (ids[:, :4] > 0).all() and (ids[:, 4:] == 0).all()  # 4 words, then pads
    assert (mask[:, :4] == 1).all() and (mask[:, 4:] == 0).all()  # the mask says which are tokens


def test_text_lm_globs_and_a_token_cache_reused_until_the_source_changes(tmp_path):
    (tmp_path / "books").mkdir()
    for name in ("a", "b"):
        (tmp_path / "books" / f"{name}.txt").write_text(f"{name} " * 400)
    bundle = build("text_lm", path=str(tmp_path / "books" / "*.txt"), block_size=16)
    caches = list((tmp_path / "books" / ".mlrun-cache").glob("*.tokens"))
    assert len(caches) == 1 and caches[0].stat().st_size == 1600
    stamp = caches[0].stat().st_mtime_ns
    again = build("text_lm", path=str(tmp_path / "books" / "*.txt"), block_size=16)
    assert caches[0].stat().st_mtime_ns == stamp and again.train.fingerprint() == bundle.train.fingerprint()
    (tmp_path / "books" / "b.txt").write_text("changed " * 300)
    changed = build("text_lm", path=str(tmp_path / "books" / "*.txt"), block_size=16)
    assert changed.train.fingerprint() != bundle.train.fingerprint()
    x, y = changed.train[0]
    assert torch.equal(x[1:], y[:-1])
    (tmp_path / "val.txt").write_text("held out " * 50)
    explicit = build(
        "text_lm", path=str(tmp_path / "books" / "a.txt"), val_path=str(tmp_path / "val.txt"), block_size=16
    )
    assert len(explicit.train) == 800 // 16 - 1 + (800 % 16 > 0)


def test_hf_disk_dataset_and_dataset_dict(tmp_path):
    hf = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    columns = {
        "x1": rng.normal(size=60).tolist(),
        "x2": rng.normal(size=60).tolist(),
        "label": [i % 3 for i in range(60)],
    }
    hf.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "single"))
    single = build("hf_disk", path=str(tmp_path / "single"), val_fraction=0.25)
    assert single.meta.input_shape == (2,) and (len(single.train), len(single.val)) == (45, 15)
    texts = {"text": ["spam offer"] * 10 + ["hello friend"] * 10, "label": ["spam"] * 10 + ["ham"] * 10}
    hf.DatasetDict({"train": hf.Dataset.from_dict(texts), "validation": hf.Dataset.from_dict(texts)}).save_to_disk(
        str(tmp_path / "dict")
    )
    text = build("hf_disk", path=str(tmp_path / "dict"), text_field="text", max_length=12)
    assert len(text.val) == 20 and text.meta.vocab_size == 257
    # A char run's recorded alphabet (eval on other texts) sets the ids, not the texts' own characters.
    pinned = build("hf_disk", path=str(tmp_path / "dict"), text_field="text", tokenizer="char", alphabet="a ehlo")
    assert pinned.meta.vocab_size == 8 and pinned.preprocessing["tokenizer"]["alphabet"] == " aehlo"
    with pytest.raises(UsageError, match="only text"):
        build("hf_disk", path=str(tmp_path / "single"), alphabet="ab")


def _few_shot_sources(tmp_path, source: str) -> dict:
    """Settings of one data source (3 classes of 20; csv and hf_disk text 2 classes), with preprocessing
    that does not depend on the training rows, so kept samples can be found among the whole split's."""
    rng = np.random.default_rng(0)
    if source == "npz":
        np.savez(tmp_path / "d.npz", x=rng.normal(size=(60, 4)).astype(np.float32), y=np.arange(60) % 3)
        return {"path": str(tmp_path / "d.npz")}
    if source == "csv":
        table = str(write_table(tmp_path, missing=False)[0])
        return {"path": table, "target": "target", "features": ["a", "b"], "scale": "none"}
    if source == "image_folder":
        return {"root": str(write_images(tmp_path / "images")), "grayscale": True, "mean": [0.5], "std": [0.25]}
    hf = pytest.importorskip("datasets")
    if source == "hf_disk":
        columns = {"x1": rng.normal(size=60).tolist(), "label": [i % 3 for i in range(60)]}
        hf.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "hf"))
        return {"path": str(tmp_path / "hf")}
    texts = {"text": [f"spam offer {i}" for i in range(20)] + [f"hello friend {i}" for i in range(20)]}
    hf.Dataset.from_dict({**texts, "label": ["spam"] * 20 + ["ham"] * 20}).save_to_disk(str(tmp_path / "hf"))
    return {"path": str(tmp_path / "hf"), "text_field": "text", "max_length": 16}


def _inputs(split) -> torch.Tensor:
    return split.tensors["input_ids"] if hasattr(split, "tensors") else torch.stack([s[0] for s in split])


def _targets(split) -> torch.Tensor:
    return split.tensors["labels"] if hasattr(split, "tensors") else split.targets


def _rows(split) -> list[tuple]:
    return [tuple(row.flatten().tolist()) for row in _inputs(split)]


@pytest.mark.parametrize("source", ["npz", "csv", "image_folder", "hf_disk", "hf_disk_text"])
def test_every_labelled_source_keeps_few_training_samples_per_class_drawn_by_the_seed(tmp_path, source):
    name = source.removesuffix("_text")
    settings = _few_shot_sources(tmp_path, source)
    full = build(name, **settings)
    few = build(name, **settings, train_per_class=3)
    assert torch.bincount(_targets(few.train)).tolist() == [3] * full.meta.num_classes
    assert torch.equal(_inputs(few.val), _inputs(full.val))  # validation stays whole
    # Drawn from the same training split by the seed: some of its rows, not its first three of each class.
    kept, whole, labels = _rows(few.train), _rows(full.train), _targets(full.train).tolist()
    assert set(kept) <= set(whole)
    first = [row for i, row in enumerate(whole) if labels[: i + 1].count(labels[i]) <= 3]
    assert kept != first
    assert _rows(build(name, 1, **settings, train_per_class=3).train) != kept  # another seed, other rows
    fits = min(torch.bincount(_targets(full.train)).tolist())  # the message names the largest count that fits
    with pytest.raises(UsageError, match=f"train_per_class: 100 is more .* lower it to at most {fits},"):
        build(name, **settings, train_per_class=100)


def test_few_shot_preprocessing_is_fitted_on_the_kept_rows(tmp_path):
    path = str(write_table(tmp_path, missing=False)[0])
    few = build("csv", path=path, target="target", features=["a", "b"], train_per_class=3)
    assert abs(float(few.train.inputs[:, 0].mean())) < 1e-5  # the scaler saw the 6 kept rows, not the split
    root = str(write_images(tmp_path / "images"))
    images = build("image_folder", root=root, grayscale=True, train_per_class=2)
    pixels = torch.stack([images.train[i][0] for i in range(len(images.train))])
    assert abs(float(pixels.mean())) < 1e-4  # mean and std of the kept images
    with pytest.raises(UsageError, match="class0"):  # the error names the class folders
        build("image_folder", root=root, grayscale=True, train_per_class=50)


def test_a_few_shot_run_evaluates_on_another_file_whose_training_share_is_smaller(tmp_path):
    path, frame = write_table(tmp_path, missing=False)
    data = {"name": "csv", "path": path.name, "target": "target", "train_per_class": 10, "batch_size": 8}
    run = train_run(tmp_path, tiny_config(name="few", data=data, train={"epochs": 1}))
    frame.head(16).to_csv(tmp_path / "new.csv", index=False)  # ~6 training rows a class: fewer than 10
    result = run_cli("eval", str(run), "data.path=new.csv", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scored = len(build("csv", path=str(tmp_path / "new.csv"), target="target").val)  # its validation share
    assert json.loads(result.stdout)["samples"] == scored


def test_train_per_class_on_a_regression_target_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", x=rng.normal(size=(40, 3)).astype(np.float32), y=rng.normal(size=40))
    fails(tmp_path, {"name": "npz", "path": "r.npz", "train_per_class": 5}, "data.train_per_class", "regression")


# --- augmentation ---------------------------------------------------------------------------------

IMAGES = DataMeta(task="classification", input_shape=(1, 6, 6), num_classes=3)


def augment(name: str, x, y, seed: int = 0, meta: DataMeta = IMAGES, **settings):
    step = augmentations.build(name, meta, **settings)
    return step(x, y, torch.Generator().manual_seed(seed))


def test_every_image_augmentation_keeps_shapes_and_is_reproducible():
    x, y = torch.randn(8, 1, 6, 6), torch.arange(8) % 3
    for name in augmentations.names():
        a, ya = augment(name, x, y)
        b, yb = augment(name, x, y)
        assert a.shape == x.shape and torch.equal(a, b) and torch.equal(ya, yb), name
        assert not torch.equal(a, x) or name in ("hflip",), name  # every step changes something


def test_flip_and_crop_move_pixels_exactly():
    x = torch.arange(36.0).view(1, 1, 6, 6)
    assert torch.equal(augment("hflip", x, torch.zeros(1), p=1.0)[0], x.flip(-1))
    cropped = augment("random_crop", x, torch.zeros(1), padding=2)[0]
    inside = cropped[cropped != 0]
    # A shifted window of the original: consecutive values along a row differ by 1.
    rows = [r[r != 0] for r in cropped[0, 0]]
    assert inside.numel() > 0 and all(torch.all(r.diff() == 1) for r in rows if r.numel() > 1)


def test_mixup_and_cutmix_give_class_probabilities():
    x, y = torch.randn(16, 1, 6, 6), torch.arange(16) % 3
    for name in ("mixup", "cutmix"):
        _, soft = augment(name, x, y, seed=3)
        assert soft.shape == (16, 3) and torch.allclose(soft.sum(1), torch.ones(16))
        assert (soft.max(1).values < 1).any()  # labels really mixed


def test_image_steps_refuse_feature_data():
    with pytest.raises(UsageError, match="works on \\(C, H, W\\) images"):
        augmentations.build("random_crop", DataMeta(task="classification", input_shape=(10,), num_classes=2))


# --- dedup ----------------------------------------------------------------------------------------


def test_dedup_drops_duplicates_and_reports_leakage(tmp_path):
    x = np.repeat(np.arange(50, dtype=np.float32)[:, None], 4, axis=1)
    x = np.concatenate([x, x[:10]])  # 10 duplicates
    y = np.concatenate([np.arange(50) % 2, np.arange(1, 11) % 2])  # every copy has the other label
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "val.npz", x=x[:5] + 0.5, y=y[:5])
    np.savez(tmp_path / "leaky.npz", x=np.concatenate([x[:3], x[:5] + 0.5]), y=np.zeros(8, dtype=int))
    config = tiny_config(
        data={"name": "npz", "path": "train.npz", "val_path": "leaky.npz", "dedup": True, "batch_size": 8}
    )
    config["train"] = {"epochs": 1}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "dedup dropped 10 duplicate training samples" in result.stdout
        and "LEAKAGE: 3 validation samples" in result.stdout
    )
    cleaning = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())["data_cleaning"]
    assert cleaning["train_duplicates_dropped"] == 10 and cleaning["val_samples_also_in_train"] == 3
    assert cleaning["train_conflicting_labels"] == 10


# --- through the CLI --------------------------------------------------------------------------------


def test_csv_run_saves_its_preprocessing_for_eval_and_export(tmp_path):
    write_table(tmp_path)
    data = {
        "name": "csv",
        "path": "table.csv",
        "target": "target",
        "impute": "median",
        "select": [{"method": "kbest", "k": 3}],
    }
    config = tiny_config(data={**data, "batch_size": 16})
    config["train"] = {**config["train"], "epochs": 10}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "tiny"
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    assert final["val/accuracy"] > 0.75
    evaluated = run_cli("eval", run_dir, "--json", cwd=tmp_path)
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["metrics"]["val/accuracy"] == pytest.approx(
        final["val/accuracy"]
    )
    # Other data is prepared with the run's pickled pipeline, not one refitted to it: feature `a`
    # (the target is a > 0) shifted by 3 standard deviations stays shifted, and accuracy collapses.
    _, frame = write_table(tmp_path)
    frame.assign(a=frame["a"] + 3).to_csv(tmp_path / "shifted.csv", index=False)
    shifted = run_cli("eval", run_dir, "--json", "data.path=shifted.csv", cwd=tmp_path)
    assert shifted.returncode == 0, shifted.stderr
    assert json.loads(shifted.stdout.strip().splitlines()[-1])["metrics"]["val/accuracy"] < final["val/accuracy"] - 0.15
    frame.drop(columns="colour").to_csv(tmp_path / "fewer.csv", index=False)
    fewer = run_cli("eval", run_dir, "data.path=fewer.csv", cwd=tmp_path)
    assert fewer.returncode == 2 and "preprocessing.pkl does not fit these columns" in fewer.stderr
    exported = run_cli("export", run_dir, "--format", "safetensors", "--json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    import pickle

    folder = next((run_dir / "export").iterdir())
    with open(folder / "preprocessing.pkl", "rb") as file:
        pipeline = pickle.load(file)
    import pandas as pd

    assert pipeline.transform(pd.read_csv(tmp_path / "table.csv").drop(columns="target")).shape[1] == 3


@pytest.mark.e2e  # a run dies by SIGKILL
def test_augmented_run_with_workers_resumes_bit_identically_and_logs_data_wait(tmp_path):
    write_images(tmp_path / "images", per_class=30)

    def config(name: str, **model) -> dict:
        data = {
            "name": "image_folder",
            "root": "images",
            "grayscale": True,
            "cache": False,  # decoded in the workers
            "num_workers": 2,
            "batch_size": 8,
            "augment": [{"name": "random_crop", "padding": 1}, "hflip", {"name": "mixup", "p": 0.5}],
        }
        c = tiny_config(name=name, data=data, model={"name": "tests.fixtures:probe_mlp", **model})
        c["train"] = {"epochs": 2, "log_every": "3st", "checkpoint_every": "5st"}  # 9 batches an epoch
        return c

    # Only the run that dies needs a process of its own; the others run in this one.
    straight = run_cli("train", write_config(tmp_path, config("straight"), "s.yaml"), cwd=tmp_path, subprocess=False)
    assert straight.returncode == 0, straight.stderr
    killed = run_cli("train", write_config(tmp_path, config("resumed", kill_at=13), "k.yaml"), cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL
    r = write_config(tmp_path, config("resumed"), "r.yaml")
    resumed = run_cli("train", r, "--allow-config-change", cwd=tmp_path, subprocess=False)  # kill_at differs
    assert resumed.returncode == 0 and "resumed at step 10" in resumed.stdout, resumed.stderr
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / "runs" / n / "model.safetensors") for n in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [line for line in read_jsonl(tmp_path / "runs" / "straight" / "metrics.jsonl") if "train/loss" in line]
    assert all(0 <= line["train/data_wait_fraction"] <= 1 for line in logged)
    assert json.loads((tmp_path / "runs" / "straight" / "manifest.json").read_text())["num_workers"] == 2


# --- bad data: exit 2, one message ----------------------------------------------------------------


def fails(tmp_path, data: dict, *expected: str, model: dict | None = None):
    config = tiny_config(data=data, **({"model": model} if model else {}))
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def test_bad_tables(tmp_path):
    write_table(tmp_path)
    fails(tmp_path, {"name": "csv", "path": "nope.csv", "target": "t"}, "data.path: no file matches 'nope.csv'")
    fails(tmp_path, {"name": "csv", "path": "table.csv", "target": "targt"}, "column 'targt'", "Did you mean 'target'?")
    fails(
        tmp_path,
        {"name": "csv", "path": "table.csv", "target": "target"},
        "column 'b'",
        "3 missing values",
        "data.impute",
    )


def test_bad_labels_and_splits(tmp_path):
    _, frame = write_table(tmp_path, missing=False)
    frame.iloc[:60].assign(target="no").to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[60:].to_csv(tmp_path / "val.csv", index=False)
    data = {"name": "csv", "path": "train.csv", "val_path": "val.csv", "target": "target"}
    fails(tmp_path, data, "data.val_path ('", "val.csv'): 33 validation samples have a label", "(first: 'yes';")
    y = np.arange(20) % 2
    np.savez(tmp_path / "train.npz", x=np.zeros((20, 2), np.float32), y=y)
    np.savez(tmp_path / "val.npz", x=np.zeros((20, 2), np.float32), y=np.where(y, 7, 0))
    data = {"name": "npz", "path": "train.npz", "val_path": "val.npz"}
    fails(tmp_path, data, "data.val_path ('val.npz'): 10 validation samples", "(first: 7; training classes: [0, 1])")
    np.savez(tmp_path / "one.npz", x=np.zeros((4, 2), np.float32), y=np.arange(4))
    fails(tmp_path, {"name": "npz", "path": "one.npz"}, "empty val split")


def test_bad_arrays(tmp_path):
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.zeros(2), np.zeros(3), np.zeros(2)]
    np.savez(tmp_path / "ragged.npz", x=ragged, y=np.arange(3))
    fails(tmp_path, {"name": "npz", "path": "ragged.npz"}, "samples of mixed shapes")
    x = np.ones((20, 3), np.float32)
    x[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(20) % 2)
    fails(tmp_path, {"name": "npz", "path": "nan.npz"}, "1 samples have NaN", "sample 4")


def test_labels_of_mixed_kinds_exit_2_naming_the_file(tmp_path):
    np.savez(tmp_path / "mixed.npz", x=np.ones((20, 3), np.float32), y=np.array([1, "a"] * 10, dtype=object))
    fails(tmp_path, {"name": "npz", "path": "mixed.npz"}, "mixed.npz", "labels mix number and string values")


def test_bad_json_lines_exit_2_naming_the_file_and_line(tmp_path):
    records = [json.dumps({"text": "some words", "label": "yes" if i % 2 else "no"}) for i in range(10)]
    (tmp_path / "null.jsonl").write_text("\n".join([*records[:4], '{"text": "more", "label": null}', *records]))
    fails(tmp_path, {"name": "jsonl_text", "path": "null.jsonl"}, "null.jsonl:5: 'label' must be a string or a number")
    latin1 = "\n".join([*records[:2], '{"text": "tr\u00e8s bien", "label": "yes"}', *records])
    (tmp_path / "latin1.jsonl").write_bytes(latin1.encode("latin-1"))
    fails(tmp_path, {"name": "jsonl_text", "path": "latin1.jsonl"}, "latin1.jsonl:3: not UTF-8 (byte 0xe8")


def test_hf_disk_mistakes_exit_2_saying_what_to_change(tmp_path):
    hf = pytest.importorskip("datasets")
    columns = {"x1": [0.5, 1.5] * 10, "word": ["a", "b"] * 10, "label": [0, 1] * 10}
    splits = {"train": hf.Dataset.from_dict(columns), "test": hf.Dataset.from_dict(columns)}
    hf.DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    # No 'validation' split and val_split left out: val_fraction of train, as documented.
    assert len(build("hf_disk", path=str(tmp_path / "dict"), features=["x1"]).val) == 4
    data = {"name": "hf_disk", "path": "dict", "features": ["x1"]}
    result = run_cli("validate", write_config(tmp_path, tiny_config(data={**data, "val_split": "test"})), cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # one scalar column: samples of one feature
    fails(tmp_path, {**data, "val_split": "validation"}, "data.val_split: no split 'validation'", "Splits: train, test")
    fails(tmp_path, {**data, "features": ["x1", "word"]}, "data.features: column 'word' does not hold numbers")
    (tmp_path / "table.csv").write_text("x1,label\n1,0\n")
    fails(tmp_path, {**data, "path": "table.csv"}, "data.path: 'table.csv' is a file")


def test_bad_images(tmp_path):
    (tmp_path / "empty").mkdir()
    fails(tmp_path, {"name": "image_folder", "root": "empty"}, "holds no images")
    root = write_images(tmp_path / "images")
    Image.new("L", (5, 5)).save(root / "class0" / "odd.png")
    fails(tmp_path, {"name": "image_folder", "root": "images"}, "images of mixed shapes", "data.size")
    (root / "class1" / "broken.png").write_bytes(b"\x89PNG not really")
    fails(tmp_path, {"name": "image_folder", "root": "images", "size": 8}, "1 images cannot be decoded", "broken.png")
    config = tiny_config(data={"name": "image_folder", "root": "images", "size": 8, "skip_corrupt": True})
    config["train"] = {"epochs": 1}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0 and "skipped 1 images" in result.stdout, result.stderr


def test_bad_augmentation_and_loss_combinations(tmp_path):
    fails(tmp_path, {**tiny_config()["data"], "augment": ["hflip"]}, "'hflip' works on (C, H, W) images")
    fails(tmp_path, {**tiny_config()["data"], "augment": ["mixupp"]}, "Did you mean 'mixup'?")


def test_shipped_example_data_matches_its_generator(tmp_path):
    """configs/data/ is what scripts/make_example_data.py writes, so the examples can be regenerated."""
    script = REPO / "scripts" / "make_example_data.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)
    for name in ("wine_regions.csv", "digits_ascii.jsonl", "digits_png/3/0003.png"):
        assert (tmp_path / name).read_bytes() == (REPO / "configs" / "data" / name).read_bytes(), name


def test_augmentation_is_applied_by_the_training_loop(tmp_path):
    def config(name: str, augment: list) -> dict:
        record = str(tmp_path / f"{name}.pt")
        c = tiny_config(name=name, model={"name": "tests.fixtures:recording_mlp", "record": record})
        c["data"] = {**c["data"], "augment": augment}
        c["train"] = {**c["train"], "max_steps": 1}
        return c

    train_run(tmp_path, config("plain", []))
    train_run(tmp_path, config("noisy", [{"name": "gaussian_noise", "std": 0.5}]))
    plain, noisy = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "noisy.pt")
    assert plain.shape == noisy.shape
    assert math.isclose(float((noisy - plain).std()), 0.5, rel_tol=0.1)  # the same batch, with the noise


def test_data_seed_keeps_one_split_while_the_run_seed_varies_the_weights():
    from mlrun.config.schema import ExperimentConfig
    from mlrun.engine.build import build_components

    def built(seed: int, data_seed: int | None):
        data = {"name": "digits", "val_fraction": 0.2, "batch_size": 32, "seed": data_seed}
        return build_components(ExperimentConfig.model_validate(tiny_config(seed=seed, data=data)))

    def split(parts) -> torch.Tensor:
        return torch.stack([parts.bundle.val[i][0] for i in range(len(parts.bundle.val))])

    def first_weight(parts) -> torch.Tensor:
        return next(parts.model.parameters()).detach()

    pinned_1, pinned_2, default_2 = built(1, 0), built(2, 0), built(2, None)
    assert torch.equal(split(pinned_1), split(pinned_2))  # one split for both seeds
    assert not torch.equal(first_weight(pinned_1), first_weight(pinned_2))  # the run seed still draws the weights
    assert not torch.equal(split(pinned_2), split(default_2))  # unset: the split follows the run's seed


def test_a_copy_of_the_data_elsewhere_keeps_its_fingerprint_and_an_edit_changes_it(tmp_path):
    """A resume compares the data's fingerprint with the run's (changed data exits 2): the image folder's
    and the text's held their absolute paths (and the text's file time), so data staged to another
    allocation's local disk would have been refused as other data."""
    from mlrun.data.bundle import fingerprint

    root = write_images(tmp_path / "a" / "images")
    shutil.copytree(root, tmp_path / "b" / "images")
    (tmp_path / "a" / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    shutil.copy(tmp_path / "a" / "text.txt", tmp_path / "b" / "text.txt")

    def prints(folder) -> list:  # images decoded lazily: the files, not their pixels, are fingerprinted
        images = build("image_folder", root=str(folder / "images"), grayscale=True, cache=False)
        text = build("text_lm", path=str(folder / "text.txt"), block_size=16)
        return [fingerprint(split) for bundle in (images, text) for split in (bundle.train, bundle.val)]

    assert prints(tmp_path / "a") == prints(tmp_path / "b")
    (tmp_path / "b" / "text.txt").write_text("the quick brown cat jumps over the lazy dog. " * 200)
    first = sorted((tmp_path / "b" / "images" / "class0").iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\0")  # a rewritten image of another size
    before, after = prints(tmp_path / "a"), prints(tmp_path / "b")
    assert before[0:2] != after[0:2]  # the split holding the rewritten image
    assert before[2] != after[2] and before[3] != after[3]  # the text's training and validation tokens
