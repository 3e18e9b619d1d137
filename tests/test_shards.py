"""`parquet_shards`: lazily read Parquet shards train like the in-memory source, with bounded memory,
any number of workers, exact resume, and clear messages for broken or missing shards."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, run_cli, tiny_config, write_config
from tests.test_train import PROBE, summary, train, weights

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")


def digits_shards(folder: Path, rows_per_shard: int = 300, row_group: int = 50) -> Path:
    """scikit-learn's digits as Parquet shards of 300 rows in row groups of 50, plus the same table whole."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    columns = {f"p{i}": x[:, i].astype(np.float32) for i in range(x.shape[1])}
    table = pa.table({**columns, "label": y})
    shards = folder / "shards"
    shards.mkdir()
    for i, start in enumerate(range(0, len(y), rows_per_shard)):
        pq.write_table(table.slice(start, rows_per_shard), shards / f"part-{i:03d}.parquet", row_group_size=row_group)
    pq.write_table(table, folder / "digits.parquet")
    return shards


def shards_config(name: str, **data) -> dict:
    config = tiny_config(name=name, model={"name": "mlp", "hidden_sizes": [64], "dropout": 0.0})
    config["data"] = {"name": "parquet_shards", "path": "shards", "target": "label", "batch_size": 64, **data}
    config["train"] = {**config["train"], "epochs": 4, "eval_every": "2ep", "checkpoint_every": "2ep"}
    return config


def test_shards_train_like_the_in_memory_parquet_table(tmp_path):
    digits_shards(tmp_path)
    result, run = train(tmp_path, shards_config("shards"))
    assert result.returncode == 0, result.stderr
    whole = shards_config("whole")
    whole["data"] = {**whole["data"], "name": "parquet", "path": "digits.parquet", "val_fraction": 0.1}
    result, whole_run = train(tmp_path, whole)
    assert result.returncode == 0, result.stderr
    # Same split and statistics (fit_rows covers the whole training split); only the order differs.
    a, b = summary(run)["final"]["val/accuracy"], summary(whole_run)["final"]["val/accuracy"]
    assert a > 0.93 and abs(a - b) < 0.03, (a, b)


def test_block_shuffle_is_a_pure_function_of_seed_and_epoch_and_covers_every_row(tmp_path):
    from mlrun.data.parquet_shards import parquet_shards

    digits_shards(tmp_path, rows_per_shard=300, row_group=50)
    train_set = parquet_shards(0, path=str(tmp_path / "shards"), target="label", shuffle_block=2).train
    first, again, later = (train_set.epoch_order(0, e) for e in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, later)
    assert sorted(first.tolist()) == list(range(len(train_set)))  # a permutation: every row once an epoch
    groups = train_set._group_of(train_set.rows[first[:64].numpy()])
    assert len(set(groups.tolist())) <= 2  # a batch reads within one block of 2 row groups, not all 36


def test_two_workers_give_the_weights_of_none(tmp_path):
    digits_shards(tmp_path)
    runs = []
    for workers in (0, 2):
        result, run = train(tmp_path, shards_config(f"w{workers}", num_workers=workers), "train.epochs=2")
        assert result.returncode == 0, result.stderr
        runs.append(weights(run))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.e2e
def test_resume_after_sigkill_with_two_workers_is_bit_identical(tmp_path):
    digits_shards(tmp_path)

    def config(name: str, **model) -> dict:
        c = shards_config(name, num_workers=2, persistent_workers=True)
        c["model"] = {"name": PROBE, **model}
        c["train"] = {**c["train"], "epochs": 2, "checkpoint_every": "7st"}  # 26 batches an epoch
        return c

    result, straight = train(tmp_path, config("straight"), subprocess=False)  # only the killed run needs a process
    assert result.returncode == 0, result.stderr
    # Dies after the step-28 checkpoint, in epoch 2.
    killed, run = train(tmp_path, config("resumed", kill_at=33), subprocess=True)
    assert killed.returncode == -signal.SIGKILL
    resumed, _ = train(tmp_path, config("resumed"), "--allow-config-change", subprocess=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 28" in resumed.stdout
    a, b = weights(straight), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_unreadable_shard_exits_2_naming_it_or_is_skipped_and_counted(tmp_path):
    shards = digits_shards(tmp_path)
    (shards / "part-002.parquet").write_bytes(b"PAR1 truncated by a failed copy")
    path = write_config(tmp_path, shards_config("broken"))
    result = run_cli("train", path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "part-002.parquet" in result.stderr and "skip_corrupt" in result.stderr
    result = run_cli("train", path, "data.skip_corrupt=true", "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 unreadable shard(s)" in result.stderr and "part-002.parquet" in result.stderr


def test_a_glob_that_matches_no_shard_exits_2_before_training(tmp_path):
    digits_shards(tmp_path)
    path = write_config(tmp_path, shards_config("missing", path=["shards/*.parquet", "more/*.parquet"]))
    result = run_cli("train", path, cwd=tmp_path)
    assert result.returncode == 2 and "no file matches 'more/*.parquet'" in result.stderr
    assert not (tmp_path / "runs" / "missing" / "checkpoints").exists()


def small_shards(
    folder: Path, name: str = "shards", *, nan_at: tuple[int, int] | None = None, drop: str = "", retype=None
) -> Path:
    """Three shards of 100 rows (row groups of 25), features f1..f3; `nan_at` = (shard, row) puts a NaN in
    f2 there; `drop` leaves that column out of the last shard; `retype` = (column, arrow type) stores that
    column of the last shard as another type (float features truncated to whole numbers for an integer type)."""
    rng = np.random.default_rng(0)
    (folder / name).mkdir()
    for s in range(3):
        x = rng.normal(size=(100, 3)).astype(np.float32)
        if nan_at and nan_at[0] == s:
            x[nan_at[1], 1] = np.nan
        columns = {"f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2], "label": (x[:, 0] > 0).astype(np.int64)}
        if s == 2 and drop:
            del columns[drop]
        table = pa.table(columns)
        if s == 2 and retype:
            column, arrow_type = retype
            kept = table.column(column).cast(arrow_type, safe=False)
            table = table.set_column(table.schema.get_field_index(column), column, kept)
        pq.write_table(table, folder / name / f"part-{s}.parquet", row_group_size=25)
    return folder / name


def test_nan_features_exit_2_naming_the_shard_column_and_row(tmp_path):
    small_shards(tmp_path, nan_at=(2, 57))
    path = write_config(tmp_path, shards_config("nan", batch_size=32))
    nan_message = "part-2.parquet' has NaN or infinite features: 1 row(s) of row group 2 in column(s) f2"
    for command in ("validate", "train"):  # found while standardisation is fitted, before any step
        result = run_cli(command, path, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert nan_message in result.stderr and "row 57 of the shard" in result.stderr
    # A row group the fit does not sample is checked when a loader worker reads it: the same one message.
    result = run_cli("train", path, "data.fit_rows=10", "data.num_workers=2", cwd=tmp_path)
    assert result.returncode == 2 and nan_message in result.stderr
    assert "Traceback" not in result.stderr and "worker" not in result.stderr


def test_a_shard_without_a_feature_column_exits_2_naming_it(tmp_path):
    small_shards(tmp_path, drop="f3")
    result = run_cli("validate", write_config(tmp_path, shards_config("short")), cwd=tmp_path)
    assert result.returncode == 2
    assert "data.path: shard '" in result.stderr and "part-2.parquet' has no column(s) f3" in result.stderr


@pytest.mark.parametrize(
    "column, arrow_type",
    [("f2", pa.int64()), ("f2", pa.float64()), ("label", pa.int32()), ("label", pa.float64())],
    ids=["int64 feature", "float64 feature", "int32 label", "float64 label"],
)
def test_a_shard_storing_a_column_as_another_numeric_type_trains_like_the_others(tmp_path, column, arrow_type):
    small_shards(tmp_path, retype=(column, arrow_type))  # the other shards: float32 features, int64 labels
    result, run = train(tmp_path, shards_config("mixed", batch_size=32), "train.epochs=1", "metrics=[accuracy]")
    assert result.returncode == 0, result.stderr
    # Labels are read as the first shard's type: whole floats stay the classes 0 and 1, not a regression.
    assert "val/accuracy" in summary(run)["final"]
    assert json.loads((run / "preprocessing.json").read_text())["classes"] == [0, 1]


def test_an_int32_first_shard_does_not_cut_a_later_shards_large_label_ids(tmp_path):
    """Labels were read as the first shard's type: int32 there, and a later shard's id 3e9 failed to cast."""
    small_shards(tmp_path, retype=("label", pa.int32()))
    first, last = tmp_path / "shards" / "part-0.parquet", tmp_path / "shards" / "part-2.parquet"
    first.rename(tmp_path / "shards" / "part-9.parquet")  # the int32 shard now sorts first
    last.rename(first)
    table = pq.read_table(tmp_path / "shards" / "part-1.parquet")
    ids = pa.array(np.where(table.column("label").to_numpy() == 1, 3_000_000_000, 0), pa.int64())
    pq.write_table(table.set_column(3, "label", ids), tmp_path / "shards" / "part-1.parquet", row_group_size=25)
    result, run = train(tmp_path, shards_config("wide", batch_size=32), "train.epochs=1")
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "preprocessing.json").read_text())["classes"] == [0, 1, 3_000_000_000]


@pytest.mark.parametrize(
    "column, found, expected",
    [("f2", "string", "numbers"), ("label", "string", "numbers, as in the first shard (read as int64)")],
    ids=["text feature", "text label"],
)
def test_a_shard_with_text_where_numbers_are_expected_exits_2_naming_shard_column_and_types(
    tmp_path, column, found, expected
):
    small_shards(tmp_path, retype=(column, pa.string()))
    result = run_cli("train", write_config(tmp_path, shards_config("text")), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    named = "the target column" if column == "label" else "feature column"
    assert f"part-2.parquet' stores {named} '{column}' as {found}" in result.stderr
    assert expected in result.stderr and "in every shard" in result.stderr
    assert not (tmp_path / "runs" / "text" / "checkpoints").exists()


def vm_peak_run(folder: Path, config: Path, cap_bytes: int | None) -> tuple[subprocess.CompletedProcess, int]:
    """`mlrun train CONFIG` in a process whose address space is capped; (result, its VmPeak in bytes)."""
    code = (
        "import sys\nimport mlrun.cli\nsys.argv = ['mlrun', 'train', sys.argv[1]]\n"
        "try:\n    mlrun.cli.main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "peak = open('/proc/self/status').read().split('VmPeak:')[1].split()[0]\n"
        "print('VMPEAK', int(peak) * 1024, file=sys.stderr)\nsys.exit(code)\n"
    )
    cap = (lambda: resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))) if cap_bytes else None
    # Arrow's allocator (jemalloc/mimalloc) and glibc's per-thread arenas (64 MiB each) reserve address
    # space they never touch, which RLIMIT_AS counts and a cgroup's memory limit (SLURM's) does not:
    # one arena and the system allocator make the cap measure memory in use.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env |= {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=cap,
    )
    peaks = [int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("VMPEAK")]
    return result, peaks[-1] if peaks else 0


def write_wide_shards(folder: Path, shards: int, rows: int, features: int) -> int:
    """Shards of small-integer features (dictionary-encoded on disk, float32 when decoded); decoded bytes."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for s in range(shards):
        x = rng.integers(0, 16, size=(rows, features)).astype(np.float32)
        table = pa.table({**{f"f{i}": x[:, i] for i in range(features)}, "label": (x[:, 0] > 7).astype(np.int64)})
        pq.write_table(table, folder / f"part-{s:03d}.parquet", row_group_size=4096)
    return shards * rows * features * 4


@pytest.mark.e2e
def test_shards_larger_than_the_process_memory_cap_train(tmp_path):
    def config(name: str, path: str) -> Path:
        c = tiny_config(name=name, model={"name": "mlp", "hidden_sizes": [16], "dropout": 0.0})
        c["data"] = {"name": "parquet_shards", "path": path, "target": "label", "batch_size": 256, "num_workers": 0}
        c["data"]["fit_rows"] = 8192
        c["train"] = {"max_steps": 40, "log_every": "20st", "eval_every": "40st", "checkpoint_every": "40st"}
        c["tracking"] = ["jsonl"]
        return write_config(tmp_path, c, f"{name}.yaml")

    write_wide_shards(tmp_path / "small", shards=1, rows=8192, features=256)
    small, baseline = vm_peak_run(tmp_path, config("small", "small"), None)
    assert small.returncode == 0, small.stderr[-2000:]
    decoded = write_wide_shards(tmp_path / "large", shards=8, rows=65536, features=256)  # 512 MiB as float32
    cap = baseline + 192 * 2**20  # the baseline's address space plus well under half the data
    assert decoded > 2 * (cap - baseline)
    large, peak = vm_peak_run(tmp_path, config("large", "large"), cap)
    assert large.returncode == 0, large.stderr[-2000:]
    assert peak <= cap and json.loads((tmp_path / "runs" / "large" / "summary.json").read_text())["steps"] == 40


def test_prepare_turns_the_image_folder_into_shards_that_train_like_it(tmp_path):
    out = tmp_path / "digits_shards"
    prepare = ("prepare", REPO / "configs" / "digits_images.yaml", "--out", out)
    prepared = run_cli(*prepare, "--rows-per-shard", "500", cwd=REPO)
    assert prepared.returncode == 0, prepared.stderr
    assert "train shard 3/3" in prepared.stdout and f"next: mlrun train {out / 'config.yaml'}" in prepared.stdout
    record = json.loads((out / "prepare.json").read_text())
    assert record["splits"]["train"]["rows"] == 1438 and record["input_shape"] == [1, 12, 12]
    again = run_cli(*prepare, "--rows-per-shard", "500", cwd=REPO)
    assert again.returncode == 0 and "train shard 2/3: already written" in again.stdout  # resumable: nothing redone
    other = run_cli(*prepare, cwd=REPO)
    assert other.returncode == 2 and "other settings" in other.stderr

    runs = tmp_path / "runs"
    common = ["train.epochs=3", "data.num_workers=0", f"output_dir={runs}"]
    folder = run_cli("train", REPO / "configs" / "digits_images.yaml", *common, cwd=REPO)
    assert folder.returncode == 0, folder.stderr
    # shuffle_block 0: the in-memory sources' permutation, so the shards run replays the folder run.
    shards = run_cli("train", out / "config.yaml", *common, "data.shuffle_block=0", cwd=REPO)
    assert shards.returncode == 0, shards.stderr
    # The same samples, shapes and pixel statistics (augmentation pads with black), in the same order.
    a, b = summary(runs / "digits_images")["final"], summary(runs / "digits_images_shards")["final"]
    assert a["val/accuracy"] > 0.75 and a == b
    blocked = run_cli("train", out / "config.yaml", *common, "name=blocked", cwd=REPO)  # the default block shuffle
    assert blocked.returncode == 0, blocked.stderr
    c = summary(runs / "blocked")["final"]["val/accuracy"]
    assert abs(c - a["val/accuracy"]) < 0.03 and c != a["val/accuracy"]


def test_prepare_of_a_deduplicating_table_config_writes_a_config_that_trains(tmp_path):
    """tabular_csv.yaml deduplicates (data.dedup: true); prepare copied that into the shards' config, which
    then exited 2 (parquet_shards cannot deduplicate) although prepare had written the rows deduplicated."""
    out = tmp_path / "wine_shards"
    to_file = run_cli("prepare", REPO / "configs" / "tabular_csv.yaml", "--out", REPO / "README.md", cwd=REPO)
    assert to_file.returncode == 2 and "is a file; give a folder" in to_file.stderr
    prepared = run_cli("prepare", REPO / "configs" / "tabular_csv.yaml", "--out", out, cwd=REPO)
    assert prepared.returncode == 0, prepared.stderr
    trained = run_cli("train", out / "config.yaml", "train.epochs=1", f"output_dir={tmp_path / 'runs'}", cwd=REPO)
    assert trained.returncode == 0, trained.stderr
