"""Settings that train silently badly are named before training: a warning, or exit 2, saying what to change."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from tests.conftest import run_cli, tiny_config, write_config


def test_warmup_longer_than_the_run_and_a_batch_larger_than_the_data_are_warned(tmp_path):
    config = tiny_config(name="warn", scheduler={"name": "cosine", "warmup_steps": 100})
    config["data"] = {**config["data"], "batch_size": 1000}  # 512 training samples
    config["train"] = {**config["train"], "epochs": 2}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warm-up (100 steps)" in result.stderr and "scheduler.warmup_steps" in result.stderr
    assert "data.batch_size: 1000 is larger than the 512 training samples" in result.stderr


def test_auto_batch_size_taking_the_whole_split_on_cpu_is_warned(tmp_path):
    config = tiny_config(name="auto")
    config["data"] = {**config["data"], "batch_size": "auto"}
    config["train"] = {**config["train"], "epochs": 1}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "data.batch_size: auto chose" in result.stderr and "set data.batch_size to a number" in result.stderr


def write_table(folder: Path, target, age=None) -> Path:
    rng = np.random.default_rng(0)
    rows = ["x1,age,y"]
    for i in range(80):
        a = age[i] if age is not None and i < len(age) else f"{rng.uniform(20, 60):.1f}"
        rows.append(f"{rng.normal():.4f},{a},{target(i)}")
    path = folder / "table.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def csv_config(**data) -> dict:
    config = tiny_config(name="table", data={"name": "csv", "path": "table.csv", "target": "y", **data})
    config["train"] = {**config["train"], "epochs": 1}
    return config


def test_a_training_split_with_one_class_exits_2(tmp_path):
    write_table(tmp_path, lambda i: "a")
    path = write_config(tmp_path, csv_config())
    for command in ("validate", "train"):  # validate said "is valid" to what train refused
        result = run_cli(command, path, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "holds a single class (a)" in result.stderr and "Traceback" not in result.stderr  # its name, not 0


def test_numbers_with_a_few_text_cells_are_named_and_na_values_reads_them_as_missing(tmp_path):
    write_table(tmp_path, lambda i: "ab"[i % 2], age=["?", "41", "missing"])  # pandas reads "n/a" itself
    refused = run_cli("train", write_config(tmp_path, csv_config()), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "column 'age'" in refused.stderr and "'?', 'missing'" in refused.stderr
    assert "data.na_values: ['?', 'missing']" in refused.stderr
    fixed = csv_config(na_values=["?", "missing"], impute="median")
    result = run_cli("train", write_config(tmp_path, fixed), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "runs" / "table" / "preprocessing.pkl", "rb") as file:
        columns = dict((name, cols) for name, _, cols in pickle.load(file).named_steps["columns"].transformers)
    assert columns == {"numeric": ["x1", "age"]}  # age imputed and scaled as a number, not one-hot text


def test_float_zero_one_labels_say_they_train_a_regression(tmp_path):
    write_table(tmp_path, lambda i: f"{i % 2}.0")
    config = csv_config()
    config["loss"], config["metrics"] = "mse", []
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "data.target ('y')" in result.stderr and "data.task: classification" in result.stderr


def test_integers_nearly_all_distinct_are_warned_as_a_quantity(tmp_path):
    """An integer target of 133 values in 178 rows became a 133-class problem without a word (a user trial)."""
    write_table(tmp_path, lambda i: str(i * 7))
    classes = run_cli("validate", write_config(tmp_path, csv_config()), cwd=tmp_path)
    assert "holds 80 distinct whole numbers in 80 rows" in classes.stderr, classes.stderr
    config = csv_config(task="regression")
    config["loss"], config["metrics"] = "mse", []
    regression = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert regression.returncode == 0 and "distinct whole numbers" not in regression.stderr, regression.stderr


def test_the_target_as_a_feature_a_k_above_the_width_and_an_index_column_are_said(tmp_path):
    """A user trial: features [cultivar] (the target) and kbest k: 50 of 15 columns validated; a CSV written
    with its pandas index trained on the row number, unannounced."""
    write_table(tmp_path, lambda i: "ab"[i % 2])
    for data, says in (
        ({"features": ["x1", "y"]}, "lists the target 'y'"),
        ({"select": [{"method": "kbest", "k": 50}]}, "kbest k: 50 is more than the 2 features"),
    ):
        result = run_cli("validate", write_config(tmp_path, csv_config(**data)), cwd=tmp_path)
        assert result.returncode == 2 and says in result.stderr, result.stderr
    table = tmp_path / "table.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([f",{lines[0]}", *(f"{i},{line}" for i, line in enumerate(lines[1:]))]) + "\n")
    indexed = run_cli("validate", write_config(tmp_path, csv_config()), cwd=tmp_path)
    assert indexed.returncode == 0 and "'Unnamed: 0' have no header name" in indexed.stderr, indexed.stderr
