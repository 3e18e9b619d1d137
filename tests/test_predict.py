"""`mlrun predict`: new tables and image folders through the run's own preprocessing; scores equal `mlrun eval`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrun.prediction.outputs import prediction_tensor, records
from tests.conftest import REPO, read_jsonl, run_cli, write_config

WINE = REPO / "configs" / "data" / "wine_regions.csv"
NEW_ROWS = 60  # of the 178 rows


def split_csv(folder: Path) -> None:
    """train.csv and new.csv: the new file is the run's validation split, so `mlrun eval` scores all of it."""
    with WINE.open() as file:
        rows = list(csv.reader(file))
    body = rows[1:]  # sorted by class: every third row is new, so both files hold every class
    new = [row for i, row in enumerate(body) if i % 3 == 0]
    for name, part in (("train.csv", [row for i, row in enumerate(body) if i % 3]), ("new.csv", new)):
        with (folder / name).open("w", newline="") as file:
            csv.writer(file).writerows([rows[0], *part])


def cli_json(folder: Path, *args) -> dict:
    result = run_cli(*args, "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("predict_table")
    split_csv(folder)
    config = {
        "name": "wine",
        "seed": 0,
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "data": {"name": "csv", "path": "train.csv", "val_path": "new.csv", "target": "cultivar", "impute": "median"},
        "metrics": ["accuracy", "f1"],
        "optimizer": {"name": "adamw", "lr": 3e-3},
        "train": {"epochs": 4, "eval_every": "1ep"},
        "tracking": [{"name": "console", "plain": True}],
    }
    result = run_cli("train", write_config(folder, config), cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_scores_on_a_labelled_csv_equal_mlrun_eval_on_the_same_rows(table_run):
    evaluated = cli_json(table_run, "eval", "runs/wine")
    predicted = cli_json(table_run, "predict", "runs/wine", "new.csv")
    assert predicted["samples"] == evaluated["samples"] == NEW_ROWS
    assert predicted["scores"] == {k.removeprefix("val/"): v for k, v in evaluated["metrics"].items()}
    rows = predicted["predictions"]
    hits = [row["prediction"] == row["label"] for row in rows]
    assert np.mean(hits) == pytest.approx(predicted["scores"]["accuracy"])  # the rows are the scored ones


def test_predictions_written_as_csv_and_json_lines(table_run):
    result = run_cli("predict", "runs/wine", "new.csv", "--out", "out/p.csv", cwd=table_run)
    assert result.returncode == 0, result.stderr
    with (table_run / "out" / "p.csv").open() as file:
        table = list(csv.DictReader(file))
    assert list(table[0]) == ["row", "label", "prediction", "probability", "p_class_0", "p_class_1", "p_class_2"]
    assert [int(row["row"]) for row in table] == list(range(1, NEW_ROWS + 1))
    for row in table:
        probabilities = [float(row[f"p_class_{i}"]) for i in range(3)]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == f"class_{int(np.argmax(probabilities))}"
    result = run_cli("predict", "runs/wine", "new.csv", "--out", "out/p.jsonl", cwd=table_run)
    assert result.returncode == 0, result.stderr
    lines = read_jsonl(table_run / "out" / "p.jsonl")
    assert [line["prediction"] for line in lines] == [row["prediction"] for row in table]


def test_unlabelled_rows_get_predictions_without_scores(table_run):
    with (table_run / "new.csv").open() as file:
        rows = list(csv.DictReader(file))
    with (table_run / "unlabelled.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[k for k in rows[0] if k != "cultivar"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    report = cli_json(table_run, "predict", "runs/wine", "unlabelled.csv")
    assert report["scores"] is None and len(report["predictions"]) == NEW_ROWS
    assert "label" not in report["predictions"][0]


def test_export_folder_predicts_like_its_run(table_run):
    exported = run_cli("export", "runs/wine", "--format", "pt2", "--no-verify", cwd=table_run)
    assert exported.returncode == 0, exported.stderr
    from_run = cli_json(table_run, "predict", "runs/wine", "new.csv")
    from_export = cli_json(table_run, "predict", "runs/wine/export/pt2-none", "new.csv")
    assert [r["prediction"] for r in from_export["predictions"]] == [r["prediction"] for r in from_run["predictions"]]
    assert from_export["scores"]["accuracy"] == from_run["scores"]["accuracy"]
    assert from_export["scores"]["loss"] == pytest.approx(from_run["scores"]["loss"], rel=1e-5)


def test_a_stage_after_qat_predicts_with_the_int8_layers_eval_scores(table_run):
    """A compress stage after qat is deployed int8 (stage.json): predict runs those layers, as eval does."""
    import shutil

    stage = table_run / "runs" / "wine-int8"
    shutil.copytree(table_run / "runs/wine", stage)
    (stage / "stage.json").write_text(json.dumps({"quantize": "int8"}))  # what compress writes after a qat stage
    fp32 = cli_json(table_run, "predict", "runs/wine", "new.csv")
    int8 = cli_json(table_run, "predict", "runs/wine-int8", "new.csv")
    evaluated = cli_json(table_run, "eval", "runs/wine-int8")
    assert (fp32["quantize"], int8["quantize"], evaluated["quantize"]) == ("none", "int8", "int8")
    assert int8["scores"] == {k.removeprefix("val/"): v for k, v in evaluated["metrics"].items()}
    assert int8["scores"]["loss"] != fp32["scores"]["loss"]  # int8 layers change the logits a little
    assert int8["scores"]["loss"] == pytest.approx(fp32["scores"]["loss"], rel=0.05)
    text = run_cli("predict", "runs/wine-int8", "new.csv", "--out", "out/q.csv", cwd=table_run)
    assert "as deployed (int8)" in text.stdout, text.stdout


def write_variant(folder: Path, name: str, change) -> str:
    with (folder / "new.csv").open() as file:
        rows = list(csv.DictReader(file))
    fields = list(rows[0])
    fields, rows = change(fields, rows)
    with (folder / name).open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return name


def unseen_region(fields, rows):
    rows[3]["region"] = "mountains"
    return fields, rows


def unknown_label(fields, rows):
    rows[6]["cultivar"] = "class_9"
    return fields, rows


def misspelt(fields, rows):
    for row in rows:
        row["prolin"] = row.pop("proline")
    return [("prolin" if f == "proline" else f) for f in fields], rows


def question_mark(fields, rows):
    rows[2]["magnesium"] = "?"
    return fields, rows


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f, r: ([x for x in f if x != "proline"], r), "lacks the training column 'proline'."),
        (misspelt, "lacks the training column 'proline'. Did you mean 'prolin'?"),
        (unseen_region, "column 'region' has 1 values the run never saw in training (data rows 4; first 'mountains'"),
        (unknown_label, "labels the run has no class for (data rows 7; first 'class_9'"),
        (question_mark, "column 'magnesium' holds 1 cell(s) that are not numbers (data rows 3; first '?')"),
    ],
    ids=["missing-column", "misspelt-column", "unseen-category", "unknown-label", "text-in-numbers"],
)
def test_bad_rows_exit_2_naming_the_row(table_run, change, message):
    name = write_variant(table_run, f"bad-{abs(hash(message))}.csv", change)
    result = run_cli("predict", "runs/wine", name, cwd=table_run)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_missing_column_is_not_confused_with_another_training_column(table_run):
    """'flavanoids' missing: 'nonflavanoid_phenols' is a feature of its own, not a misspelling of it."""
    name = write_variant(table_run, "no-flavanoids.csv", lambda f, r: ([x for x in f if x != "flavanoids"], r))
    result = run_cli("predict", "runs/wine", name, cwd=table_run)
    assert result.returncode == 2 and "lacks the training column 'flavanoids'" in result.stderr, result.stderr
    assert "Did you mean" not in result.stderr


def test_a_folder_given_to_a_table_run_exits_2_saying_it_reads_one_file(table_run):
    (table_run / "tables").mkdir(exist_ok=True)
    result = run_cli("predict", "runs/wine", "tables", cwd=table_run)
    assert result.returncode == 2 and "is a folder" in result.stderr and "Errno" not in result.stderr, result.stderr


def test_unknown_output_suffix_exits_2(table_run):
    result = run_cli("predict", "runs/wine", "new.csv", "--out", "p.txt", cwd=table_run)
    assert result.returncode == 2 and "should end in .csv or .jsonl" in result.stderr


def test_out_never_replaces_the_input_or_a_runs_records(table_run):
    """--out replaced a finished run's metrics.jsonl, and the input file itself, with predictions (a user trial)."""
    records, data = (table_run / "runs/wine/metrics.jsonl").read_bytes(), (table_run / "new.csv").read_bytes()
    for out, says in (("runs/wine/metrics.jsonl", "is a record of the mlrun folder"), ("new.csv", "input")):
        result = run_cli("predict", "runs/wine", "new.csv", "--out", out, cwd=table_run)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert (table_run / "runs/wine/metrics.jsonl").read_bytes() == records
    assert (table_run / "new.csv").read_bytes() == data
    for _ in range(2):  # a file of the user's own in the run's folder, written again by the next predict
        beside = run_cli("predict", "runs/wine", "new.csv", "--out", "runs/wine/predictions.csv", cwd=table_run)
        assert beside.returncode == 0, beside.stderr


def draw_images(root: Path, per_class: int, seed: int, size: int = 8) -> None:
    """Three classes told apart by which third of the image is bright, with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(3):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size)).astype(np.uint8)
            pixels[:, label * size // 3 : (label + 1) * size // 3] += 180
            Image.fromarray(pixels, mode="L").save(root / f"c{label}" / f"{i:03d}.png")


def test_image_folder_scores_equal_eval_and_other_sizes_exit_2(tmp_path):
    draw_images(tmp_path / "train", 16, seed=0)
    draw_images(tmp_path / "new", 5, seed=1)
    config = {
        "name": "pics",
        "model": {"name": "cnn", "channels": [8]},
        "data": {"name": "image_folder", "root": "train", "val_root": "new", "grayscale": True, "batch_size": 8},
        "metrics": ["accuracy"],
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "train": {"epochs": 3},
        "tracking": [{"name": "console", "plain": True}],
    }
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    evaluated = cli_json(tmp_path, "eval", "runs/pics")
    predicted = cli_json(tmp_path, "predict", "runs/pics", "new")
    assert predicted["scores"] == {k.removeprefix("val/"): v for k, v in evaluated["metrics"].items()}
    assert {row["label"] for row in predicted["predictions"]} == {"c0", "c1", "c2"}
    from PIL import Image

    (tmp_path / "loose").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "loose" / "a.png")
    Image.new("L", (10, 10)).save(tmp_path / "loose" / "b.png")
    result = run_cli("predict", "runs/pics", "loose", cwd=tmp_path)
    assert result.returncode == 2 and "'loose/b.png' is (1, 10, 10)" in result.stderr, result.stderr


def test_a_run_on_parquet_shards_prepared_from_images_predicts_on_image_files(tmp_path):
    """`mlrun prepare` writes an image folder as Parquet shards by default; the run on them stopped on new image
    files ("data source 'parquet_shards' ... has no reader for new files yet") and knew its classes as 0, 1, 2."""
    draw_images(tmp_path / "train", 16, seed=0, size=10)
    draw_images(tmp_path / "new", 5, seed=1, size=10)
    data = {"name": "image_folder", "root": "train", "val_root": "new", "grayscale": True, "size": 8, "batch_size": 8}
    config = {
        "name": "pics",
        "model": {"name": "cnn", "channels": [8]},
        "data": data,  # resized: new images are resized as the source resized them
        "metrics": ["accuracy"],
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "train": {"epochs": 1},
        "tracking": [{"name": "console", "plain": True}],
    }
    prepared = run_cli("prepare", write_config(tmp_path, config), "--out", "shards", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    trained = run_cli("train", tmp_path / "shards" / "config.yaml", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    evaluated = cli_json(tmp_path, "eval", "runs/pics_shards")
    predicted = cli_json(tmp_path, "predict", "runs/pics_shards", "new")  # the images of the shards' val split
    assert predicted["scores"] == pytest.approx({k.removeprefix("val/"): v for k, v in evaluated["metrics"].items()})
    assert {row["label"] for row in predicted["predictions"]} == {"c0", "c1", "c2"}
    one = run_cli("predict", "runs/pics_shards", "new/c1/000.png", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines()[0] == "file,prediction,probability,p_c0,p_c1,p_c2"


def test_model_outputs_of_any_shape_give_the_same_predictions():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    expected = records(logits, "classification", ["a", "b", "c"])
    assert [r["prediction"] for r in expected] == ["a", "b"]
    for wrapped in ((logits, torch.zeros(2)), {"logits": logits, "hidden": torch.zeros(2, 5)}):
        assert records(prediction_tensor(wrapped), "classification", ["a", "b", "c"]) == expected
    values = records(torch.tensor([[1.5], [-2.0], [12.16]]), "regression", None)
    assert values == [{"prediction": 1.5}, {"prediction": -2.0}, {"prediction": 12.16}]  # not 12.15999984741211


def test_json_lines_texts_scored_like_eval_and_unlabelled_lines_predicted(tmp_path):
    lines = (REPO / "configs" / "data" / "digits_ascii.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:240]) + "\n")
    (tmp_path / "new.jsonl").write_text("\n".join(lines[240:300]) + "\n")
    unlabelled = [json.dumps({"text": json.loads(line)["text"]}) for line in lines[300:305]]
    (tmp_path / "unlabelled.jsonl").write_text("\n\n".join(unlabelled) + "\n")  # blank lines are skipped
    config = {
        "name": "texts",
        "model": {"name": "transformer_classifier", "dim": 16, "depth": 1, "heads": 2},
        "data": {"name": "jsonl_text", "path": "train.jsonl", "val_path": "new.jsonl", "tokenizer": "char"},
        "metrics": ["accuracy"],
        "train": {"epochs": 1},
        "tracking": [{"name": "console", "plain": True}],
    }
    data = config["data"]
    data["max_length"], data["batch_size"] = 72, 32
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    evaluated = cli_json(tmp_path, "eval", "runs/texts")
    predicted = cli_json(tmp_path, "predict", "runs/texts", "new.jsonl")
    assert predicted["scores"] == {k.removeprefix("val/"): v for k, v in evaluated["metrics"].items()}
    plain = cli_json(tmp_path, "predict", "runs/texts", "unlabelled.jsonl")
    assert plain["scores"] is None and [row["line"] for row in plain["predictions"]] == [1, 3, 5, 7, 9]


def test_json_lines_with_a_byte_order_mark_train_and_predict_and_bad_inputs_exit_2(tmp_path):
    lines = (REPO / "configs" / "data" / "digits_ascii.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:120]) + "\n", encoding="utf-8-sig")  # as Notepad saves
    (tmp_path / "new.jsonl").write_text("\n".join(lines[120:150]) + "\n", encoding="utf-8-sig")
    (tmp_path / "latin1.jsonl").write_bytes(('{"text": "caf\u00e9", "label": 1}\n').encode("latin-1"))
    config = {
        "name": "texts",
        "model": {"name": "transformer_classifier", "dim": 16, "depth": 1, "heads": 2},
        "data": {"name": "jsonl_text", "path": "train.jsonl", "max_length": 72, "batch_size": 32},
        "train": {"epochs": 1},
        "tracking": [{"name": "console", "plain": True}],
    }
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert cli_json(tmp_path, "predict", "runs/texts", "new.jsonl")["scores"] is not None
    for given, message in (
        ("latin1.jsonl", "latin1.jsonl:1: not UTF-8 (byte 0xe9 at column 14); save the file as UTF-8"),
        (".", "INPUT: '.' is a folder; this run reads a JSON Lines file"),
    ):
        result = run_cli("predict", "runs/texts", given, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_eval_on_other_texts_keeps_a_char_runs_alphabet(tmp_path):
    """A char tokenizer learns its alphabet from the training texts; `mlrun eval RUN data.path=OTHER`
    keeps the run's ids (as predict does) instead of refitting them on texts with other characters."""
    lines = (REPO / "configs" / "data" / "digits_ascii.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:240]) + "\n")
    (tmp_path / "new.jsonl").write_text("\n".join(lines[240:300]) + "\n")
    # '!' sorts between ' ' and '#': an alphabet refitted on these texts shifts nearly every id.
    other = [json.dumps({**json.loads(line), "text": "!" + json.loads(line)["text"]}) for line in lines[:240]]
    (tmp_path / "other.jsonl").write_text("\n".join(other) + "\n")
    config = {
        "name": "texts",
        "model": {"name": "transformer_classifier", "dim": 16, "depth": 1, "heads": 2},
        "data": {"name": "jsonl_text", "path": "train.jsonl", "val_path": "new.jsonl", "tokenizer": "char"},
        "metrics": ["accuracy"],
        "train": {"epochs": 1},
        "tracking": [{"name": "console", "plain": True}],
    }
    config["data"]["max_length"], config["data"]["batch_size"] = 72, 32
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    evaluated = cli_json(tmp_path, "eval", "runs/texts", "data.path=other.jsonl")
    predicted = cli_json(tmp_path, "predict", "runs/texts", "new.jsonl")
    assert predicted["scores"]["loss"] == pytest.approx(evaluated["metrics"]["val/loss"], rel=1e-5)
    bad = run_cli("eval", "runs/texts", "data.tokenizer=byte", "data.alphabet=ab", cwd=tmp_path)
    assert bad.returncode == 2 and "only the char tokenizer takes an alphabet" in bad.stderr


def test_raw_rows_of_a_standardised_array_run_score_as_eval(tmp_path):
    """iris trains on standardised features; predict reads raw measurements and applies the run's
    recorded mean and std (from the run, and from an ONNX export's preprocessing.json)."""
    from sklearn.datasets import load_iris

    from mlrun.data.sklearn_sets import split_and_scale

    x, y = load_iris(return_X_y=True)
    _, x_val, _, y_val, _ = split_and_scale(x, y, 0, 0.2, standardize=False)  # the run's validation rows, raw
    with (tmp_path / "raw.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f"f{i}" for i in range(x.shape[1])] + ["label"])
        writer.writerows([*row, int(label)] for row, label in zip(x_val, y_val))
    config = {
        "name": "iris",
        "seed": 0,
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "data": {"name": "iris", "batch_size": 16},
        "metrics": ["accuracy"],
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "train": {"epochs": 3},
        "tracking": [{"name": "console", "plain": True}],
    }
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    evaluated = cli_json(tmp_path, "eval", "runs/iris")
    predicted = cli_json(tmp_path, "predict", "runs/iris", "raw.csv")
    assert predicted["samples"] == evaluated["samples"] == len(y_val)
    assert predicted["scores"]["accuracy"] == evaluated["metrics"]["val/accuracy"]
    assert predicted["scores"]["loss"] == pytest.approx(evaluated["metrics"]["val/loss"], rel=1e-5)
    exported = run_cli("export", "runs/iris", "--format", "onnx", "--no-verify", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    from_export = cli_json(tmp_path, "predict", "runs/iris/export/onnx-none", "raw.csv")
    assert from_export["scores"]["accuracy"] == evaluated["metrics"]["val/accuracy"]
    assert from_export["scores"]["loss"] == pytest.approx(evaluated["metrics"]["val/loss"], rel=1e-4)
    # --checkpoint on an export folder was ignored: the export's own model predicted
    chosen = run_cli("predict", "runs/iris/export/onnx-none", "raw.csv", "--checkpoint", "best", cwd=tmp_path)
    assert chosen.returncode == 2 and "is an export folder, which holds one model" in chosen.stderr
    # Labels written as floats (2.0) are the classes eval scores them as; predict refused them ("no class")
    text = (tmp_path / "raw.csv").read_text().splitlines()
    floats = [text[0], *(line.rsplit(",", 1)[0] + "," + line.rsplit(",", 1)[1] + ".0" for line in text[1:])]
    (tmp_path / "floats.csv").write_text("\n".join(floats) + "\n")
    assert cli_json(tmp_path, "predict", "runs/iris", "floats.csv")["scores"] == predicted["scores"]
    # A file with one label missing is predicted, not scored: said on stderr, not silent
    partly = [*floats[:3], floats[3].rsplit(",", 1)[0] + ",", *floats[4:]]
    (tmp_path / "partly.csv").write_text("\n".join(partly) + "\n")
    unscored = run_cli("predict", "runs/iris", "partly.csv", "--json", cwd=tmp_path)
    assert unscored.returncode == 0 and json.loads(unscored.stdout)["scores"] is None
    assert "column 'label' is empty for 1 of" in unscored.stderr and "(data rows 3)" in unscored.stderr


def test_eval_on_another_split_keeps_an_array_runs_standardisation(tmp_path):
    """`mlrun eval RUN data.val_fraction=0.5` on wine: the features are standardised with the run's
    recorded statistics, not with ones fitted anew on the smaller training split (predict agrees)."""
    from sklearn.datasets import load_wine

    from mlrun.data.sklearn_sets import split_and_scale

    x, y = load_wine(return_X_y=True)
    _, x_val, _, y_val, _ = split_and_scale(x, y, 0, 0.5, standardize=False)  # eval's rows, raw
    with (tmp_path / "raw.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f"f{i}" for i in range(x.shape[1])] + ["label"])
        writer.writerows([*row, int(label)] for row, label in zip(x_val, y_val))
    config = {
        "name": "wine",
        "seed": 0,
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "data": {"name": "wine", "batch_size": 16, "val_fraction": 0.2},
        "metrics": ["accuracy"],
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "train": {"epochs": 2},
        "tracking": [{"name": "console", "plain": True}],
    }
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    evaluated = cli_json(tmp_path, "eval", "runs/wine", "data.val_fraction=0.5")
    predicted = cli_json(tmp_path, "predict", "runs/wine", "raw.csv")
    assert evaluated["samples"] == predicted["samples"] == len(y_val)
    assert predicted["scores"]["loss"] == pytest.approx(evaluated["metrics"]["val/loss"], rel=1e-5)
    bad = run_cli("eval", "runs/wine", "data.mean=[0.0]", "data.std=[1.0]", cwd=tmp_path)
    assert bad.returncode == 2 and "one value per feature (13)" in bad.stderr


def test_eval_on_another_folder_keeps_the_runs_normalisation(tmp_path):
    """`mlrun eval RUN data.val_root=NEW` makes the whole root the training split; normalising with
    statistics fitted on it anew would score other inputs than the weights were trained on."""
    draw_images(tmp_path / "train", 12, seed=0)
    draw_images(tmp_path / "new", 5, seed=1)
    config = {
        "name": "pics",
        "model": {"name": "cnn", "channels": [8]},
        "data": {"name": "image_folder", "root": "train", "val_fraction": 0.5, "grayscale": True, "batch_size": 8},
        "metrics": ["accuracy"],
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "train": {"epochs": 2},
        "tracking": [{"name": "console", "plain": True}],
    }
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    recorded = json.loads((tmp_path / "runs" / "pics" / "preprocessing.json").read_text())["image"]
    evaluated = cli_json(tmp_path, "eval", "runs/pics", "data.val_root=new")
    predicted = cli_json(tmp_path, "predict", "runs/pics", "new")
    assert evaluated["samples"] == predicted["samples"] == 15
    assert predicted["scores"]["loss"] == pytest.approx(evaluated["metrics"]["val/loss"], rel=1e-6)
    chosen = cli_json(tmp_path, "eval", "runs/pics", "data.val_root=new", "data.mean=[0.5]", "data.std=[0.25]")
    assert chosen["metrics"]["val/loss"] != evaluated["metrics"]["val/loss"]  # an explicit choice still wins
    assert recorded["mean"] != [0.5]


def cnn_predictions(folder: Path, name: str, data: dict, images: np.ndarray) -> tuple[dict, list[int], list[int]]:
    """Train a small CNN on `data`, predict folder/rows.csv with it: (predict's report, the classes it
    predicted, the model's own classes for `images`, the samples those rows hold)."""
    from mlrun.engine.restore import load_trained

    config = {
        "name": name,
        "model": {"name": "cnn", "channels": [8]},
        "data": {**data, "batch_size": 64},
        "metrics": ["accuracy"],
        "train": {"epochs": 1, "eval_every": "1ep", "checkpoint_every": None},
        "tracking": ["jsonl"],
    }
    assert run_cli("train", write_config(folder, config), cwd=folder).returncode == 0
    report = cli_json(folder, "predict", f"runs/{name}", "rows.csv")
    model = load_trained(folder / "runs" / name).parts.model
    with torch.no_grad():
        expected = model(torch.as_tensor(images, dtype=torch.float32)).argmax(-1).tolist()
    return report, [int(str(row["prediction"]).removeprefix("class_")) for row in report["predictions"]], expected


def test_digits_as_images_predict_from_a_table_of_64_pixel_columns(tmp_path):
    """digits `as_image` trains on 1x8x8 images scaled by 1/16: a table of raw pixels gets the same."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    with (tmp_path / "rows.csv").open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow([*(f"pixel_{i}" for i in range(64)), "target"])
        out.writerows([*map(int, x), int(y)] for x, y in zip(digits.data[:40], digits.target[:40]))
    images = (digits.data[:40] / 16.0).reshape(-1, 1, 8, 8)
    report, got, expected = cnn_predictions(tmp_path, "cnn", {"name": "digits", "as_image": True}, images)
    assert got == expected
    assert report["scores"]["accuracy"] == pytest.approx(np.mean(np.array(expected) == digits.target[:40]))


def test_npz_images_predict_from_a_table_of_their_values_in_row_major_order(tmp_path):
    """An npz source keeps its samples' shape (1x8x8 here) and values as stored: a row of 64 values is one sample."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.data / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    np.savez(tmp_path / "digits.npz", x=images, y=digits.target)
    with (tmp_path / "rows.csv").open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow([f"v{i}" for i in range(64)])
        out.writerows(image.reshape(-1).tolist() for image in images[:30])
    report, got, expected = cnn_predictions(tmp_path, "npz_cnn", {"name": "npz", "path": "digits.npz"}, images[:30])
    assert got == expected and report["scores"] is None
    # A table without its header row lost its first sample as column names; the npz itself failed to decode.
    np.savetxt(tmp_path / "headless.csv", images[:5].reshape(5, -1), delimiter=",")
    with (tmp_path / "counted.csv").open("w") as file:  # pandas' header for unnamed columns is a header
        file.write(",".join(map(str, range(64))) + "\n" + ",".join(map(str, images[0].reshape(-1).tolist())) + "\n")
    counted = run_cli("predict", "runs/npz_cnn", "counted.csv", cwd=tmp_path)
    assert counted.returncode == 0 and "1 predictions" in counted.stderr + counted.stdout, counted.stderr
    for given, says in (("headless.csv", "the first row holds numbers"), ("digits.npz", "is an array file")):
        refused = run_cli("predict", "runs/npz_cnn", given, cwd=tmp_path)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr


def test_an_export_predicts_with_its_own_copy_of_a_tokenizer_file(tmp_path):
    """The export read the tokenizer from the run's recorded path: once that file moved, the export could
    not predict (and a tokenizer.json was not even copied into it)."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = (REPO / "configs" / "data" / "digits_ascii.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:240]) + "\n")
    (tmp_path / "new.jsonl").write_text("\n".join(lines[240:280]) + "\n")
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    texts = [json.loads(line)["text"] for line in lines[:240]]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    data = {"name": "jsonl_text", "path": "train.jsonl", "val_path": "new.jsonl", "tokenizer": "tok/tokenizer.json"}
    config = {
        "name": "texts",
        "model": {"name": "transformer_classifier", "dim": 16, "depth": 1, "heads": 2},
        "data": {**data, "max_length": 72, "batch_size": 32},
        "train": {"epochs": 1},
        "tracking": [{"name": "console", "plain": True}],
    }
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    assert run_cli("export", "runs/texts", "--format", "onnx", cwd=tmp_path).returncode == 0
    before = cli_json(tmp_path, "predict", "runs/texts/export/onnx-none", "new.jsonl")
    # Replaced in place by one of the same size with the ids reversed: the run read it silently (1.000 -> 0.75).
    vocab = tokenizer.get_vocab()
    reversed_ids = {token: len(vocab) - 1 - i for token, i in vocab.items()}
    Tokenizer(models.WordLevel(reversed_ids, unk_token="[UNK]")).save(str(tmp_path / "tok" / "tokenizer.json"))
    for command in (("eval", "runs/texts"), ("predict", "runs/texts", "new.jsonl")):
        refused = run_cli(*command, cwd=tmp_path)
        assert refused.returncode == 2 and "changed since run" in refused.stderr, refused.stderr
    (tmp_path / "tok").rename(tmp_path / "moved")
    after = cli_json(tmp_path, "predict", "runs/texts/export/onnx-none", "new.jsonl")
    assert after["predictions"] == before["predictions"] and after["scores"] == before["scores"]


def test_an_export_predicts_without_the_user_model_code_it_was_made_from(tmp_path):
    """predict on an export loaded the run's config with every component looked up, so a user model's
    module had to travel with a file that runs the model by itself (exit 2: cannot import)."""
    split_csv(tmp_path)
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\n"
        "def tiny(meta, /, *, width: int = 8):\n"
        "    layers = [nn.Linear(meta.input_shape[0], width), nn.ReLU(), nn.Linear(width, meta.num_classes)]\n"
        "    return nn.Sequential(*layers)\n"
    )
    config = {
        "name": "mine",
        "model": {"name": "my_models:tiny", "width": 16},
        "data": {"name": "csv", "path": "train.csv", "val_path": "new.csv", "target": "cultivar", "impute": "median"},
        "metrics": ["accuracy"],
        "train": {"epochs": 2},
        "tracking": [{"name": "console", "plain": True}],
    }
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    exported = run_cli("export", "runs/mine", "--format", "pt2", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    before = cli_json(tmp_path, "predict", "runs/mine/export/pt2-none", "new.csv")
    (tmp_path / "my_models.py").unlink()
    after = cli_json(tmp_path, "predict", "runs/mine/export/pt2-none", "new.csv")
    assert after["predictions"] == before["predictions"] and after["scores"] == before["scores"]
    from_run = run_cli("predict", "runs/mine", "new.csv", cwd=tmp_path)  # the run itself rebuilds the model
    assert from_run.returncode == 2 and "my_models" in from_run.stderr


@pytest.mark.parametrize("as_image", [False, True])
def test_a_run_on_some_digits_predicts_and_reads_labels_as_those_digits(tmp_path, as_image):
    """data.classes [7, 3] trains outputs 0 and 1: predict named them 0 and 1 and refused rows labelled 7 or 3."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, [7, 3])
    with (tmp_path / "rows.csv").open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow([*(f"pixel_{i}" for i in range(64)), "target"])
        out.writerows([*map(int, x), int(y)] for x, y in zip(digits.data[keep][:60], digits.target[keep][:60]))
    config = {
        "name": "some",
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "data": {"name": "digits", "as_image": as_image, "classes": [7, 3]},
        "metrics": ["accuracy"],
        "train": {"epochs": 2},
        "tracking": [{"name": "console", "plain": True}],
    }
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    report = cli_json(tmp_path, "predict", "runs/some", "rows.csv")
    rows = report["predictions"]
    assert {row["prediction"] for row in rows} <= {7, 3} and {row["label"] for row in rows} == {7, 3}
    assert set(rows[0]) >= {"p_7", "p_3"}
    assert np.mean([row["prediction"] == row["label"] for row in rows]) == pytest.approx(report["scores"]["accuracy"])
    assert report["scores"]["accuracy"] > 0.9


@pytest.mark.parametrize("source", ["parquet_shards", "hf_disk"])
def test_named_feature_columns_are_taken_by_name_with_the_runs_own_label(tmp_path, source):
    """predict took a parquet_shards or hf_disk run's columns by position: the same rows with the columns
    reversed scored 0.32 instead of 0.70 with no error, and the run's target column ('cls') was read as a
    feature ("5 feature columns, the model takes 4")."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4)).astype(np.float32)
    frame = pd.DataFrame(x * [1, 2, 3, 4] + [0, 5, -5, 10], columns=["a", "b", "c", "d"])
    frame["cls"] = (x[:, 0] + x[:, 3] > 0).astype(int)
    if source == "parquet_shards":
        pytest.importorskip("pyarrow")
        (tmp_path / "shards").mkdir()
        frame.to_parquet(tmp_path / "shards" / "part-0.parquet")
        data = {"name": "parquet_shards", "path": "shards", "target": "cls"}
    else:
        hf = pytest.importorskip("datasets")
        hf.Dataset.from_pandas(frame).save_to_disk(str(tmp_path / "hf"))
        data = {"name": "hf_disk", "path": "hf", "label": "cls"}
    config = {
        "name": "named",
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "data": {**data, "batch_size": 32},
        "train": {"epochs": 2},
        "tracking": [{"name": "console", "plain": True}],
    }
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame[["cls", "d", "c", "b", "a"]].to_csv(tmp_path / "reversed.csv", index=False)
    straight = cli_json(tmp_path, "predict", "runs/named", "rows.csv")
    reordered = cli_json(tmp_path, "predict", "runs/named", "reversed.csv")
    assert straight["scores"] is not None  # 'cls' read as the labels, not as a fifth feature
    assert reordered["predictions"] == straight["predictions"] and reordered["scores"] == straight["scores"]
    frame[["a", "b", "c"]].to_csv(tmp_path / "short.csv", index=False)
    missing = run_cli("predict", "runs/named", "short.csv", cwd=tmp_path)
    assert missing.returncode == 2 and "lacks the training column 'd'" in missing.stderr, missing.stderr


def test_an_hf_disk_class_label_keeps_its_names_as_the_runs_classes(tmp_path):
    """hf_disk recorded a ClassLabel column's ids (0, 1, 2) as the run's classes, so predict printed ids where
    image_folder and csv runs print the names; a file the dataset writes (to_csv) still labels rows by id."""
    hf = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    dataset = hf.Dataset.from_dict({"a": x[:, 0], "b": x[:, 1], "label": y})
    dataset = dataset.cast_column("label", hf.ClassLabel(names=["low", "mid", "high"]))
    dataset.save_to_disk(str(tmp_path / "hf"))
    config = {
        "name": "named",
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "data": {"name": "hf_disk", "path": "hf", "batch_size": 32},
        "train": {"epochs": 2},
        "tracking": [{"name": "console", "plain": True}],
    }
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    preprocessing = json.loads((tmp_path / "runs" / "named" / "preprocessing.json").read_text())
    assert preprocessing["classes"] == ["low", "mid", "high"]
    dataset.to_csv(str(tmp_path / "rows.csv"), index=False)
    report = cli_json(tmp_path, "predict", "runs/named", "rows.csv")
    rows = report["predictions"]
    assert {row["prediction"] for row in rows} <= {"low", "mid", "high"}
    assert {"p_low", "p_mid", "p_high"} <= set(rows[0])
    assert report["scores"] is not None and [row["label"] for row in rows[:3]] == ["mid", "high", "mid"]
    # -1, the datasets library's "no label", was read as the last name ("high") without a word.
    unlabelled = hf.Dataset.from_dict({"a": x[:, 0], "b": x[:, 1], "label": np.where(y == 2, -1, y)})
    unlabelled.cast_column("label", hf.ClassLabel(names=["low", "mid", "high"])).save_to_disk(str(tmp_path / "hf"))
    refused = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert refused.returncode == 2 and "id(s) [-1] that its ClassLabel names none of" in refused.stderr, refused.stderr
