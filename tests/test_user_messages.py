"""Bad input found trying mlrun as a new user would: exit 2 with the file or component named and what to do."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, tiny_config, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run: the folder holding runs/t."""
    folder = tmp_path_factory.mktemp("trained")
    config = tiny_config(name="t")
    config["train"] = {**config["train"], "epochs": 1}
    result = run_cli("train", write_config(folder, config, "t.yaml"), cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_weights_are_written_with_the_umask_like_every_other_file(trained: Path) -> None:
    run = trained / "runs/t"
    expected = 0o666 & ~_umask()
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    for path in (run / "model.safetensors", checkpoint / "model.safetensors", run / "summary.json"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_damaged_weights_file_exits_2_naming_it(tmp_path: Path, trained: Path) -> None:
    import shutil

    shutil.copytree(trained / "runs", tmp_path / "runs")
    weights = tmp_path / "runs/t/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])  # a copy cut short
    rows = tmp_path / "rows.csv"
    np.savetxt(rows, np.zeros((3, 16)), delimiter=",", header=",".join(f"x{i}" for i in range(16)), comments="")
    config = tiny_config(name="fine", init_from={"run": "runs/t"})
    config["train"] = {**config["train"], "max_steps": 2}
    commands = {
        "eval": ["eval", "runs/t"],
        "export": ["export", "runs/t"],
        "predict": ["predict", "runs/t", rows],
        "init_from": ["train", write_config(tmp_path, config, "fine.yaml")],
    }
    for label, args in commands.items():
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (label, result.stderr)
        assert "runs/t/model.safetensors" in result.stderr and "damaged" in result.stderr, (label, result.stderr)
        assert "unexpected error" not in result.stderr, label


def test_export_out_refuses_a_file_and_a_folder_of_other_files(tmp_path: Path, trained: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/data.csv").write_text("a\n1\n")
    run = trained / "runs/t"
    for out, says in ((tmp_path / "notes.txt", "existing file"), (tmp_path / "mine", "not an earlier export")):
        result = run_cli("export", run, "--out", out, cwd=tmp_path)
        assert result.returncode == 2 and says in result.stderr and str(out) in result.stderr, result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and (tmp_path / "mine/data.csv").is_file()
    # A new folder, then the same folder again (an earlier export is replaced).
    for _ in range(2):
        result = run_cli("export", run, "--out", tmp_path / "exported", "--no-verify", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "exported/export.json").is_file()


@pytest.mark.parametrize(
    "option, says",
    [
        (["--epochs", "3"], "train.epochs=3"),
        (["--lr=0.1"], "optimizer.lr=0.1"),
        (["--batch-size", "8"], "data.batch_size=8"),
    ],
)
def test_a_config_key_given_as_an_option_says_how_to_write_it(tmp_path: Path, option: list[str], says: str) -> None:
    path = write_config(tmp_path, tiny_config(name="o"))
    result = run_cli("train", path, *option, cwd=tmp_path)
    assert result.returncode == 2 and says in result.stderr, result.stderr


USER_MODELS = """
from torch import nn


def raises(meta, /, *, width: int = 8):
    raise RuntimeError("cannot find my weights")


def positional(meta, width=8):
    return nn.Linear(meta.input_shape[0], meta.num_classes)


def five_outputs(meta, /):
    return nn.Linear(meta.input_shape[0], 5)


def rejects(meta, /, *, width: int = 8):
    raise ValueError("width must be a power of two")


def twelve_outputs(meta, /):
    return nn.Linear(meta.input_shape[0], 12)


def returns_none(meta, /):
    nn.Linear(meta.input_shape[0], meta.num_classes)


WIDTH = 3
"""


@pytest.mark.parametrize(
    "model, says",
    [
        ({"name": "usermodels:raises"}, ["usermodels:raises", "RuntimeError: cannot find my weights"]),
        ({"name": "usermodels:positional", "width": 4}, ["positional parameter", "/, *, width"]),
        ({"name": "usermodels:five_outputs"}, ["5 outputs", "10 classes"]),
        ({"name": "usermodels:twelve_outputs"}, ["12 outputs", "10 classes", "must be 10 wide"]),
        # wherever a model is built (also as a teacher, a saved run): named as the user's own
        ({"name": "usermodels:rejects"}, ["'usermodels:rejects' (your factory) raised ValueError: width must be"]),
        ({"name": "usermodels:returns_none"}, ["'usermodels:returns_none' returned NoneType, not a torch.nn"]),
        ({"name": "usermodels:WIDTH"}, ["'usermodels:WIDTH' is int 3, not a function or class"]),
    ],
)
def test_user_model_factories_that_fail_are_named_and_told_what_to_do(tmp_path: Path, model, says) -> None:
    (tmp_path / "usermodels.py").write_text(USER_MODELS)
    data = {**tiny_config()["data"], "num_classes": 10}
    path = write_config(tmp_path, tiny_config(name="user", model=model, data=data))
    result = run_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert all(s in result.stderr for s in says) and "unexpected error" not in result.stderr, result.stderr


def test_a_data_factory_returning_no_bundle_and_two_metrics_of_one_name_exit_2(tmp_path: Path) -> None:
    (tmp_path / "userdata.py").write_text("def rows(seed, /):\n    return [[0.0, 1.0]]\n")
    cases = {
        "data": (
            ["data={name: 'userdata:rows'}"],
            "'userdata:rows' returned list, not a mlrun.data.bundle.DatasetBundle",
        ),
        "metrics": (["metrics=[accuracy, f1, accuracy]"], "'accuracy' and 'accuracy' both log val/accuracy"),
        "classes": (["data={name: digits, classes: [5, 5, 6]}"], "data.classes: [5, 5, 6] names a class twice"),
    }
    path = write_config(tmp_path, tiny_config(name="user"))
    for label, (overrides, says) in cases.items():
        result = run_cli("validate", path, *overrides, cwd=tmp_path)
        assert result.returncode == 2 and says in result.stderr, (label, result.stderr)


def test_init_from_with_the_same_names_and_other_shapes_says_the_shapes_differ(tmp_path: Path, trained: Path) -> None:
    config = tiny_config(name="wider", init_from={"run": str(trained / "runs/t")})
    config["model"] = {**config["model"], "hidden_sizes": [64]}
    config["train"] = {**config["train"], "max_steps": 2}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "same names but other shapes" in result.stderr and "[32, 16] in the source" in result.stderr
    assert "check init_from.prefix" not in result.stderr


def test_compare_shows_a_stage_folders_metrics_and_says_when_there_is_one_run(tmp_path: Path, trained: Path) -> None:
    import json
    import shutil

    shutil.copytree(trained / "runs", tmp_path / "runs")
    prune = "{name: prune, sparsity: 0.5, schedule: one_shot, finetune: {train.max_steps: 3}}"
    chain = f"compress=[{prune}, {{name: low_rank, rank: 4, finetune: false}}]"
    assert run_cli("compress", "runs/t", chain, cwd=tmp_path).returncode == 0
    stages = ["runs/t/compress/1-prune", "runs/t/compress/2-low_rank"]
    result = run_cli("compare", "runs/t", *stages, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["run"]: row for row in json.loads(result.stdout)["runs"]}
    deployed = json.loads((tmp_path / stages[1] / "stage.json").read_text())["result"]["metrics"]["val/accuracy"]
    assert rows["2-low_rank"]["final val/accuracy"] == deployed and rows["2-low_rank"]["status"] == "stage done"
    assert rows["1-prune"]["steps"] == 3  # its fine-tuning
    # The stages' settings tell them from the run (a prune stage's config.yaml is the run's: "differing keys: none")
    assert {"stage.name", "stage.sparsity"} <= set(json.loads(result.stdout)["differing_keys"])
    table = run_cli("compare", "runs/t", *stages, cwd=tmp_path)
    assert "not started" not in table.stdout and "stage done" in table.stdout
    alone = run_cli("compare", "runs/t", cwd=tmp_path)
    assert alone.returncode == 0 and "only one run" in alone.stderr


def test_long_config_values_are_shortened_in_the_table() -> None:
    from mlrun.commands.compare import format_cell

    edits = [{"op": "resize", "module": f"blocks.{i}.0", "shapes": {"weight": [64, 64]}} for i in range(30)]
    cell = format_cell(frozenset({"model_edits"}), "model_edits", edits)
    assert len(cell) <= 60 and cell.endswith("...")
    assert format_cell(frozenset({"optimizer.lr"}), "optimizer.lr", 0.003) == "0.003"


def test_an_exponent_without_a_dot_is_a_number_in_overrides_and_files(tmp_path: Path) -> None:
    config = tiny_config(name="exp")
    config_text = write_config(tmp_path, config).read_text().replace("lr: 0.01", "lr: 3e-3")
    (tmp_path / "exp.yaml").write_text(config_text)
    from_file = run_cli("validate", "exp.yaml", "--print", cwd=tmp_path)
    assert from_file.returncode == 0 and "lr: 0.003\n" in from_file.stdout, from_file.stdout
    override = run_cli("validate", "exp.yaml", "optimizer.lr=1e-2", "--print", cwd=tmp_path)
    assert override.returncode == 0 and "lr: 0.01\n" in override.stdout and "'1e-2'" not in override.stdout


def test_eval_prints_four_significant_digits(trained: Path) -> None:
    result = run_cli("eval", "runs/t", cwd=trained)
    assert result.returncode == 0, result.stderr
    figures = [line.split()[-1] for line in result.stdout.splitlines() if line.strip().startswith("val/")]
    assert figures and all(len(f.replace(".", "").lstrip("0")) <= 4 for f in figures), result.stdout
