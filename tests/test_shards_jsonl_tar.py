"""`jsonl_shards` and `image_shards`: JSON Lines and tar shards read through cached indexes train exactly
like the in-memory sources on the same samples, with any number of workers, and say which shard and
byte offset is broken; `mlrun prepare --format jsonl | image_tar` writes them."""

from __future__ import annotations

import io
import json
import re
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, run_cli, tiny_config, write_config
from tests.test_predict import cli_json
from tests.test_train import PROBE, summary, train, weights

TEXTS = REPO / "configs" / "data" / "digits_ascii.jsonl"  # each digit drawn as ASCII art, 1,797 lines


def text_shards(folder: Path, per_shard: int = 300) -> Path:
    """The first 900 ASCII-art digits as JSON Lines shards of 300 lines, and as one file (whole.jsonl)."""
    lines = TEXTS.read_text().splitlines(keepends=True)[:900]
    (folder / "whole.jsonl").write_text("".join(lines))
    shards = folder / "texts"
    shards.mkdir()
    for i, start in enumerate(range(0, len(lines), per_shard)):
        (shards / f"part-{i}.jsonl").write_text("".join(lines[start : start + per_shard]))
    return shards


def text_config(name: str, **data) -> dict:
    config = tiny_config(name=name, model={"name": "transformer_classifier", "dim": 16, "depth": 1, "heads": 2})
    config["data"] = {"name": "jsonl_shards", "path": "texts", "tokenizer": "char", "max_length": 72, **data}
    config["data"] = {"batch_size": 64, "num_workers": 0, **config["data"]}
    config["train"] = {**config["train"], "epochs": 1, "eval_every": "1ep", "checkpoint_every": "1ep"}
    return config


def same_weights(a: Path, b: Path) -> bool:
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_jsonl_shards_train_exactly_like_jsonl_text_on_the_same_records(tmp_path):
    text_shards(tmp_path)
    result, shards = train(tmp_path, text_config("shards"))
    assert result.returncode == 0, result.stderr
    whole = text_config("whole", path="whole.jsonl")
    whole["data"]["name"] = "jsonl_text"
    result, in_memory = train(tmp_path, whole)
    assert result.returncode == 0, result.stderr
    # The same split, alphabet and (seed, epoch) order: the lazy reader changes nothing the model sees.
    assert summary(shards)["final"] == summary(in_memory)["final"] and same_weights(shards, in_memory)
    from mlrun.data.jsonl_shards import jsonl_shards
    from mlrun.data.text import jsonl_text

    lazy, held = jsonl_shards(0, path=str(tmp_path / "texts")), jsonl_text(0, path=str(tmp_path / "whole.jsonl"))
    for split in ("train", "val"):  # every batch, not just the outcome: the texts themselves arrive
        a, b = getattr(lazy, split), getattr(held, split)
        everything = list(range(len(b)))
        assert len(a) == len(b) and all(torch.equal(a.__getitems__(everything)[k], b[everything][k]) for k in b[0])
    assert (b[everything]["attention_mask"].sum(1) > 20).all()
    a, b = (cli_json(tmp_path, "predict", f"runs/{run}", "whole.jsonl") for run in ("shards", "whole"))
    assert a["scores"] == b["scores"] and len(a["predictions"]) == 900  # the run's recorded tokenizer
    cached = sorted(p.name for p in (tmp_path / "texts" / ".mlrun-cache").iterdir())
    assert len(cached) == 3 and all(name.startswith("part-") and name.endswith(".npz") for name in cached)


def test_shards_saved_with_a_byte_order_mark_are_read_as_jsonl_text_reads_them(tmp_path):
    """Windows editors start a UTF-8 file with a byte-order mark, Notepad often on a blank first line:
    jsonl_text read such a file, jsonl_shards refused its first line as "not valid JSON"."""
    from mlrun.data.jsonl_shards import jsonl_shards
    from mlrun.data.text import jsonl_text

    shards = text_shards(tmp_path)
    lines = TEXTS.read_text().splitlines(keepends=True)[:900]
    bom = "\ufeff".encode()
    (shards / "part-0.jsonl").write_bytes(bom + b"\r\n" + "".join(lines[:300]).encode())  # a mark, a blank line
    (shards / "part-1.jsonl").write_bytes(bom + "".join(lines[300:600]).encode())  # a mark before the record
    (tmp_path / "whole.jsonl").write_bytes(bom + b"\r\n" + "".join(lines).encode())
    lazy, held = jsonl_shards(0, path=str(shards)), jsonl_text(0, path=str(tmp_path / "whole.jsonl"))
    for split in ("train", "val"):  # the same records, split alike, and the texts arrive without the mark
        a, b = getattr(lazy, split), getattr(held, split)
        everything = list(range(len(b)))
        assert len(a) == len(b) and all(torch.equal(a.__getitems__(everything)[k], b[everything][k]) for k in b[0])
    assert lazy.train._text(300) == json.loads(lines[300])["text"]  # part-1's first record, after the mark


def test_jsonl_shards_two_workers_give_the_weights_of_none(tmp_path):
    text_shards(tmp_path)
    runs = []
    for workers in (0, 2):
        result, run = train(tmp_path, text_config(f"w{workers}", num_workers=workers, cache_samples=0))
        assert result.returncode == 0, result.stderr
        runs.append(run)
    assert same_weights(*runs)


def test_the_line_index_is_reused_until_a_shard_changes_and_goes_to_temp_when_read_only(tmp_path, monkeypatch, capsys):
    from mlrun.data import shard_files
    from mlrun.data.jsonl_shards import jsonl_shards

    shards = text_shards(tmp_path)
    first = jsonl_shards(0, path=str(shards))
    index = sorted((shards / ".mlrun-cache").iterdir())[0]
    stamp = index.stat().st_mtime_ns
    assert len(jsonl_shards(0, path=str(shards)).train) == len(first.train) and index.stat().st_mtime_ns == stamp
    with (shards / "part-0.jsonl").open("a") as extra:  # 200 more records: the shard's size changes
        extra.writelines(json.dumps({"text": f"more {i}", "label": str(i % 10)}) + "\n" for i in range(200))
    grown = jsonl_shards(0, path=str(shards))
    assert len(grown.train) + len(grown.val) == 900 + 200 and index.stat().st_mtime_ns != stamp
    monkeypatch.setattr(shard_files.os, "access", lambda path, mode: False)  # a read-only dataset mount
    monkeypatch.setattr(shard_files.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    jsonl_shards(0, path=str(shards))
    assert "is read-only; shard indexes are cached under" in capsys.readouterr().err
    assert len(list((tmp_path / "tmp" / "mlrun-index-cache").glob("*/part-*.npz"))) == 3


def test_a_corrupt_jsonl_line_exits_2_naming_shard_and_offset_or_is_skipped_and_counted(tmp_path):
    shards = text_shards(tmp_path)
    part = shards / "part-1.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    offset = sum(len(line.encode()) for line in lines[:5])
    part.write_text("".join(lines[:5]) + '{"text": "cut sho\n' + "".join(lines[5:]))
    path = write_config(tmp_path, text_config("broken"))
    result = run_cli("train", path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        f"shard '{tmp_path / 'texts' / 'part-1.jsonl'}' line 6 (byte offset {offset}): not valid JSON" in result.stderr
    )
    assert not (tmp_path / "runs" / "broken" / "checkpoints").exists()
    result = run_cli("train", path, "data.skip_corrupt=true", "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 corrupt line(s)" in result.stderr and f"byte offset {offset}" in result.stderr


@pytest.mark.parametrize("source", ["jsonl", "tar"])
def test_a_missing_shard_of_a_glob_exits_2_before_training(tmp_path, source):
    if source == "jsonl":
        text_shards(tmp_path)
        config = text_config("missing", path=["texts/*.jsonl", "more/*.jsonl"])
    else:
        digits_pngs(tmp_path)
        config = image_config("missing", path=["tars/part-*.tar", "tars/part-9.tar"])
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no file matches" in result.stderr and ("more/*.jsonl" in result.stderr or "part-9.tar" in result.stderr)
    assert not (tmp_path / "runs" / "missing").exists()


def digits_pngs(folder: Path, per_tar: int = 600, tree: bool = False) -> Path:
    """scikit-learn's digits as 8x8 PNG files in tar shards (webdataset layout: <key>.png + <key>.cls), and with
    `tree` the same files as a class-folder tree for image_folder, in the order image_folder lists them."""
    from PIL import Image
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    pixels = (x.reshape(-1, 8, 8) * 255 / 16).round().astype(np.uint8)
    samples = []
    for i in np.argsort(y, kind="stable"):  # image_folder's order: class folders, then file names
        png = io.BytesIO()
        Image.fromarray(pixels[i]).save(png, "PNG")
        if tree:
            (folder / "png" / str(y[i])).mkdir(parents=True, exist_ok=True)
            (folder / "png" / str(y[i]) / f"{i:04d}.png").write_bytes(png.getvalue())
        samples.append((f"{y[i]}_{i:04d}", png.getvalue(), str(y[i]).encode()))
    (folder / "tars").mkdir()
    for shard, start in enumerate(range(0, len(samples), per_tar)):
        with tarfile.open(folder / "tars" / f"part-{shard}.tar", "w") as tar:
            for key, png, label in samples[start : start + per_tar]:
                for name, data in ((f"{key}.png", png), (f"{key}.cls", label)):
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    return folder / "tars"


def image_config(name: str, **data) -> dict:
    config = tiny_config(name=name, model={"name": "mlp", "hidden_sizes": [32], "dropout": 0.0})
    config["data"] = {"name": "image_shards", "path": "tars", "grayscale": True, "batch_size": 64, "num_workers": 0}
    config["data"] |= data
    config["train"] = {**config["train"], "epochs": 2, "eval_every": "1ep", "checkpoint_every": "1ep"}
    return config


def test_image_shards_train_exactly_like_the_image_folder_of_the_same_pngs(tmp_path):
    digits_pngs(tmp_path, tree=True)
    augment = [{"name": "random_crop", "padding": 1}]  # augmentation runs on the batch, seeded as for the folder
    result, shards = train(tmp_path, image_config("shards", augment=augment))
    assert result.returncode == 0, result.stderr
    folder = image_config("folder", augment=augment)
    folder["data"] = {**folder["data"], "name": "image_folder", "root": "png"}
    del folder["data"]["path"]
    result, in_memory = train(tmp_path, folder)
    assert result.returncode == 0, result.stderr
    assert summary(shards)["final"] == summary(in_memory)["final"] and same_weights(shards, in_memory)
    assert summary(shards)["final"]["val/accuracy"] > 0.7  # 10 classes: chance is 0.1
    recorded = json.loads((shards / "preprocessing.json").read_text())
    assert recorded == json.loads((in_memory / "preprocessing.json").read_text())  # statistics, classes
    a, b = (cli_json(tmp_path, "predict", f"runs/{run}", "png") for run in ("shards", "folder"))
    assert a["scores"] == b["scores"] and len(a["predictions"]) == 1797  # predict prepares images as training did


def test_image_shards_two_workers_give_the_weights_of_none(tmp_path):
    digits_pngs(tmp_path)
    runs = []
    for workers in (0, 2):
        config = image_config(f"w{workers}", num_workers=workers, cache_samples=0)
        result, run = train(tmp_path, config, "train.epochs=1")
        assert result.returncode == 0, result.stderr
        runs.append(run)
    assert same_weights(*runs)


def test_a_broken_tar_exits_2_naming_shard_and_offset_or_its_samples_are_skipped_and_counted(tmp_path):
    tars = digits_pngs(tmp_path)
    data = (tars / "part-1.tar").read_bytes()
    (tars / "part-1.tar").write_bytes(data[: len(data) // 2])  # a copy that stopped half way
    with tarfile.open(tars / "part-2.tar") as tar:  # a damaged image: its bytes overwritten in place
        image = next(m for m in tar.getmembers() if m.name.endswith(".png"))
    with (tars / "part-2.tar").open("r+b") as raw:
        raw.seek(image.offset_data)
        raw.write(b"\0" * image.size)
    path = write_config(tmp_path, image_config("broken"))
    result = run_cli("train", path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        f"shard '{tmp_path / 'tars' / 'part-1.tar'}' byte offset" in result.stderr and "skip_corrupt" in result.stderr
    )
    assert "the tar ends without its end-of-archive blocks" in result.stderr
    result = run_cli("train", path, "data.skip_corrupt=true", "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The cut tar loses its tail and the sample whose label was cut off; the zeroed PNG is one sample.
    assert "skipped 3 corrupt sample(s) or tar region(s)" in result.stderr
    assert f"'{tmp_path / 'tars' / 'part-2.tar'}' byte offset {image.offset_data}" in result.stderr


def test_an_empty_or_non_tar_shard_exits_2_naming_it_or_is_skipped_and_counted(tmp_path):
    tars = digits_pngs(tmp_path)
    (tars / "part-3.tar").write_bytes(b"")  # a download that never started
    (tars / "part-4.tar").write_bytes(b"<html>404 Not Found</html>\n" * 40)  # a web page saved as a shard
    path = write_config(tmp_path, image_config("not_tars"))
    result = run_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "shard 'tars/part-3.tar' byte offset 0" in result.stderr and "skip_corrupt" in result.stderr
    assert "not an uncompressed tar" in result.stderr
    result = run_cli("validate", path, "data.skip_corrupt=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped 2 corrupt sample(s) or tar region(s)" in result.stderr
    assert "(1438 train / 359 val" in result.stdout  # all 1,797 digits kept
    assert "'tars/part-4.tar' byte offset 0" in result.stderr


def test_a_damaged_header_mid_tar_exits_2_naming_its_offset_or_only_the_damaged_bytes_are_lost(tmp_path):
    tars = digits_pngs(tmp_path)
    shard = tars / "part-0.tar"
    with shard.open("r+b") as raw:  # 3,000 bytes in the middle overwritten in place, member headers among them
        raw.seek(shard.stat().st_size // 2)
        raw.write(b"\xff" * 3000)
    path = write_config(tmp_path, image_config("damaged"))
    result = run_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "shard 'tars/part-0.tar' byte offset" in result.stderr and "no readable tar header in bytes" in result.stderr
    result = run_cli("validate", path, "data.skip_corrupt=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Read on past the damage: only the two or three samples stored in those bytes are lost, not half the shard.
    train, val = re.search(r"\((\d+) train / (\d+) val", result.stdout).groups()
    assert 1797 - 3 <= int(train) + int(val) < 1797
    lost = re.search(r"no readable tar header in bytes \d+-\d+ \(([\d,]+) bytes\)", result.stderr).group(1)
    assert 3000 <= int(lost.replace(",", "")) < 8192  # the damage, rounded out to whole members and blocks


PAX_GLOBAL = {"format": tarfile.PAX_FORMAT, "pax_headers": {"comment": "git archive writes one"}}


@pytest.mark.parametrize("tar_format", [PAX_GLOBAL, {"format": tarfile.GNU_FORMAT}], ids=["pax global", "gnu long"])
def test_tars_with_extended_headers_are_read_whole(tmp_path, tar_format):
    """A pax global header before the first member looked like damaged bytes to the gap check (a review):
    a shard `git archive` or a pax writer made was refused."""
    from PIL import Image

    from mlrun.data.image_shards import scan_tar

    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(png, format="PNG")
    shard = tmp_path / "part.tar"
    with tarfile.open(shard, "w", **tar_format) as tar:
        for index in range(3):
            key = f"{'long-name-' * 12}{index:05d}"  # past ustar's 100 characters: extended headers per member
            for extension, data in (("png", png.getvalue()), ("cls", b"3")):
                member = tarfile.TarInfo(f"{key}.{extension}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    scanned = scan_tar(shard)
    assert len(scanned["keys"]) == 3 and scanned["bad_reasons"].tolist() == []


def test_a_sample_missing_its_label_or_image_is_named_in_plain_english(tmp_path):
    from mlrun.data.image_shards import scan_tar

    shard = tmp_path / "part.tar"
    with tarfile.open(shard, "w") as tar:  # "a.png" without its label, "b.cls" without its image
        for name, data in (("a.png", b"\x89PNG"), ("b.cls", b"3")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    reasons = sorted(scan_tar(shard)["bad_reasons"].tolist())
    assert reasons[0] == "'a' has no .cls label"
    assert reasons[1].startswith("'b' has no image (.png, .jpg")


@pytest.mark.e2e
def test_image_shards_resume_after_sigkill_with_two_workers_is_bit_identical(tmp_path):
    digits_pngs(tmp_path)

    def config(name: str, **model) -> dict:
        c = image_config(name, num_workers=2, persistent_workers=True)
        c["model"] = {"name": PROBE, **model}
        c["train"] = {**c["train"], "epochs": 2, "checkpoint_every": "7st"}  # 23 batches an epoch
        return c

    result, straight = train(tmp_path, config("straight"), subprocess=False)  # only the killed run needs a process
    assert result.returncode == 0, result.stderr
    # Dies after the step-28 checkpoint, in epoch 2.
    killed, run = train(tmp_path, config("resumed", kill_at=30), subprocess=True)
    assert killed.returncode == -signal.SIGKILL
    resumed, _ = train(tmp_path, config("resumed"), "--allow-config-change", subprocess=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 28" in resumed.stdout and same_weights(straight, run)


def test_prepare_writes_image_tars_that_train_like_the_image_folder(tmp_path):
    runs, common = tmp_path / "runs", ["train.epochs=1", "data.num_workers=0", "model.channels=[8]"]
    common.append(f"output_dir={runs}")
    out = tmp_path / "digits_tars"
    prepare = ("prepare", REPO / "configs" / "digits_images.yaml", "--out", out, "--format", "image_tar")
    prepared = run_cli(*prepare, "--rows-per-shard", "500", cwd=REPO)
    assert prepared.returncode == 0, prepared.stderr
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"part-0000{i}.tar" for i in range(3)]
    again = run_cli(*prepare, "--rows-per-shard", "500", cwd=REPO)
    assert again.returncode == 0 and "train shard 2/3: already written" in again.stdout  # resumable
    as_parquet = run_cli(*prepare[:-2], "--rows-per-shard", "500", cwd=REPO)
    assert as_parquet.returncode == 2 and "other settings" in as_parquet.stderr
    folder = run_cli("train", REPO / "configs" / "digits_images.yaml", *common, cwd=REPO)
    assert folder.returncode == 0, folder.stderr
    shards = run_cli("train", out / "config.yaml", *common, cwd=REPO)
    assert shards.returncode == 0, shards.stderr
    # Lossless PNGs of the pixels the model saw, the source's split, statistics and order: the same run.
    assert summary(runs / "digits_images")["final"] == summary(runs / "digits_images_shards")["final"]
    # New 8x8 images are resized to the source's data.size, which the shards' config keeps (it was dropped:
    # "the run was trained on (1, 12, 12) without resizing").
    new_images = REPO / "configs" / "data" / "digits_png" / "3"
    by_folder = run_cli("predict", runs / "digits_images", new_images, "--json", cwd=REPO)
    by_shards = run_cli("predict", runs / "digits_images_shards", new_images, "--json", cwd=REPO)
    assert by_shards.returncode == 0, by_shards.stderr
    assert json.loads(by_shards.stdout)["predictions"] == json.loads(by_folder.stdout)["predictions"]


def test_prepare_writes_jsonl_shards_that_train_like_the_jsonl_text_source(tmp_path):
    runs = tmp_path / "runs"
    out = tmp_path / "text_shards"
    texts = REPO / "configs" / "text_classification.yaml"
    split = "data.seed=3"  # the split prepared is the one training uses: data.seed's, not the run seed's
    prepared = run_cli("prepare", texts, split, "--out", out, "--format", "jsonl", "--rows-per-shard", "500", cwd=REPO)
    assert prepared.returncode == 0, prepared.stderr
    record = json.loads((out / "prepare.json").read_text())
    assert record["splits"]["train"]["rows"] == 1438 and record["preprocessing"]["tokenizer"]["kind"] == "char"
    small = ["train.epochs=1", "model.dim=16", "model.depth=1", f"output_dir={runs}"]
    source = run_cli("train", texts, *small, split, cwd=REPO)
    assert source.returncode == 0, source.stderr
    shards = run_cli("train", out / "config.yaml", *small, cwd=REPO)
    assert shards.returncode == 0, shards.stderr
    assert summary(runs / "text_classification")["final"] == summary(runs / "text_classification_shards")["final"]


def test_prepare_refuses_a_format_the_source_cannot_give(tmp_path):
    texts = run_cli(
        "prepare", REPO / "configs" / "quickstart.yaml", "--out", tmp_path / "a", "--format", "jsonl", cwd=REPO
    )
    assert texts.returncode == 2 and "writes the records of a jsonl_text source" in texts.stderr
    images = run_cli(
        "prepare", REPO / "configs" / "quickstart.yaml", "--out", tmp_path / "b", "--format", "image_tar", cwd=REPO
    )
    assert images.returncode == 2 and "does not give normalised images" in images.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_prepare_on_jsonl_shards_says_what_it_can_and_cannot_do_without_sending_the_user_in_a_loop(tmp_path):
    text_shards(tmp_path)
    path = write_config(tmp_path, text_config("texts"))
    for shard_format in ("jsonl", "parquet", "image_tar"):
        result = run_cli("prepare", path, "--out", tmp_path / shard_format, "--format", shard_format, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        # Each refusal says the shards are ready to train on; none points at another --format (which refuses too).
        assert "already JSON Lines shards" in result.stderr and "use --format" not in result.stderr, result.stderr
        assert "--format jsonl writes" not in result.stderr and not (tmp_path / shard_format).exists()


def test_prepare_on_a_text_lm_config_points_at_no_format_that_refuses_it_too(tmp_path):
    """--format jsonl on text_lm sent the user to --format parquet, which refuses token batches too (a review)."""
    (tmp_path / "book.txt").write_text("the quick brown fox jumps over the lazy dog. " * 100)
    config = tiny_config(name="lm", data={"name": "text_lm", "path": "book.txt", "block_size": 16})
    path = write_config(tmp_path, config)
    for shard_format in ("jsonl", "parquet"):
        result = run_cli("prepare", path, "--out", tmp_path / shard_format, "--format", shard_format, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "--format parquet writes" not in result.stderr and "memory-mapped" in result.stderr, result.stderr
