"""The run folder is shared (DESIGN §3): a command replaces only what it wrote itself and can rebuild.

train beside lr_find/, tune/, profile/ and a user's files; --overwrite keeps other commands' folders;
a compress stage folder is not a training run; a second, different compress chain keeps the first.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from tests.conftest import run_cli, tiny_config, write_config


def one_epoch(name: str, **sections) -> dict:
    config = tiny_config(name=name, **sections)
    config["train"] = {**config["train"], "epochs": 1}
    return config


def test_train_after_lr_find_keeps_the_sweep(tmp_path: Path) -> None:
    path = write_config(tmp_path, one_epoch("found"))
    swept = run_cli("lr-find", path, "--steps", "12", cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr
    run = tmp_path / "runs/found"
    before = (run / "lr_find/lr_find.json").read_text()
    trained = run_cli("train", path, cwd=tmp_path)  # the `next:` line lr-find prints
    assert trained.returncode == 0, trained.stderr
    assert (run / "lr_find/lr_find.json").read_text() == before and (run / "lr_find/lr_find.png").is_file()
    assert (run / "model.safetensors").is_file()


def test_a_restart_without_checkpoint_removes_only_trains_own_files(tmp_path: Path) -> None:
    run = tmp_path / "runs/again"
    # An earlier start that died before its first checkpoint, beside a study, a profile and a note.
    (run / "tune/trials/trial-0000").mkdir(parents=True)
    (run / "tune/best.yaml").write_text("optimizer: {lr: 0.01}\n")
    (run / "profile").mkdir()
    (run / "profile/profile.json").write_text("{}\n")
    (run / "notes.txt").write_text("mine\n")
    (run / "manifest.json").write_text("{}\n")
    (run / "summary.json").write_text(json.dumps({"status": "failed"}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 999, "epoch": 9, "time": 0, "train/loss": 9.9}) + "\n")
    result = run_cli("train", write_config(tmp_path, one_epoch("again")), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run / "tune/best.yaml").read_text() == "optimizer: {lr: 0.01}\n"
    assert (run / "tune/trials/trial-0000").is_dir()
    assert (run / "profile/profile.json").is_file() and (run / "notes.txt").read_text() == "mine\n"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 999 not in steps  # the failed start's metrics were train's own: replaced


def test_overwrite_restarts_training_and_keeps_other_commands_folders(tmp_path: Path) -> None:
    path = write_config(tmp_path, one_epoch("over"))
    assert run_cli("train", path, cwd=tmp_path).returncode == 0
    run = tmp_path / "runs/over"
    kept = ["lr_find/lr_find.json", "tune/best.yaml", "profile/profile.json", "export/onnx/export.json", "mine.txt"]
    for name in kept:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("{}\n")
    (run / "checkpoints/step-00000001").mkdir()  # a checkpoint of the old training: train's own
    refused = run_cli("train", path, cwd=tmp_path)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and "tune/" in refused.stderr
    again = run_cli("train", path, "--overwrite", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert all((run / name).read_text() == "{}\n" for name in kept)
    assert not (run / "checkpoints/step-00000001").exists()
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_folder_holding_weights_train_did_not_write_exits_2(tmp_path: Path) -> None:
    folder = tmp_path / "runs/downloaded"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"someone else's weights")
    path = write_config(tmp_path, one_epoch("downloaded"))
    result = run_cli("train", path, cwd=tmp_path)
    assert result.returncode == 2 and "model.safetensors" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr
    assert (folder / "model.safetensors").read_bytes() == b"someone else's weights"


def compress_config(tmp_path: Path, stages: list[dict], file: str) -> Path:
    config = one_epoch("base", model={"name": "mlp", "hidden_sizes": [32, 16], "dropout": 0.0})
    return write_config(tmp_path, {**config, "compress": stages}, file)


PRUNE = {"name": "prune", "sparsity": 0.5, "schedule": "one_shot", "finetune": False}
LOW_RANK = {"name": "low_rank", "rank": 4, "finetune": False}


def test_training_into_a_compress_stage_folder_exits_2_and_keeps_the_stage(tmp_path: Path) -> None:
    path = compress_config(tmp_path, [PRUNE, LOW_RANK], "chain.yaml")
    assert run_cli("train", path, cwd=tmp_path).returncode == 0
    done = run_cli("compress", path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stage = tmp_path / "runs/base/compress/2-low_rank"
    weights, record = (stage / "model.safetensors").read_bytes(), (stage / "stage.json").read_text()
    for flag in ([], ["--overwrite"]):
        result = run_cli(
            "train", stage / "config.yaml", "output_dir=runs/base/compress", "train.max_steps=3", *flag, cwd=tmp_path
        )
        assert result.returncode == 2 and str(Path("runs/base/compress/2-low_rank")) in result.stderr, result.stderr
        assert "init_from" in result.stderr and "Traceback" not in result.stderr
    assert (stage / "model.safetensors").read_bytes() == weights and (stage / "stage.json").read_text() == record


def test_a_different_compress_chain_keeps_the_first_and_goes_to_a_new_folder(tmp_path: Path) -> None:
    first = compress_config(tmp_path, [PRUNE, LOW_RANK], "first.yaml")
    assert run_cli("train", first, cwd=tmp_path).returncode == 0
    assert run_cli("compress", first, cwd=tmp_path).returncode == 0
    root = tmp_path / "runs/base/compress"
    (root / "2-low_rank/export/onnx").mkdir(parents=True)  # an export made inside a stage
    report = (root / "compress.json").read_text()
    # As timed on a quiet CPU: a record timed on a busy one is measured again by the next command
    # (tests/test_compress.py), which would change the figures this test expects to stay.
    record = json.loads((root / "trained.json").read_text())
    record["figures"]["latency_spread"] = 0.0
    (root / "trained.json").write_text(json.dumps(record))
    # A shorter chain that shares nothing: the first chain's stages, exports and report stay.
    other = {**PRUNE, "sparsity": 0.9}
    second = run_cli("compress", compress_config(tmp_path, [other], "second.yaml"), "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "holds another chain" in second.stderr and "compress-2" in second.stderr
    assert json.loads(second.stdout)["folder"] == str(Path("runs/base/compress-2"))
    assert (root / "1-prune/stage.json").is_file() and (root / "2-low_rank/export/onnx").is_dir()
    assert (root / "compress.json").read_text() == report
    assert (tmp_path / "runs/base/compress-2/1-prune/stage.json").is_file()
    # The first chain again reuses its folder; one that shares its first stage starts from a copy of it.
    again = run_cli("compress", first, cwd=tmp_path)
    assert again.returncode == 0 and "reusing" in again.stderr and "another chain" not in again.stderr
    # The rerun's report is the first's to the digit: stages and the trained model keep their figures
    # (a fresh timing of the trained model beside reused stage timings gave absurd speedups).
    from mlrun.compression.run import mark_latency_trust

    first_report = json.loads(report)
    first_report["stages"][0]["latency_spread"] = 0.0  # the record made quiet above
    mark_latency_trust(first_report["stages"])  # every row's trust leans on the trained model's timing
    assert json.loads((root / "compress.json").read_text()) == first_report
    third = compress_config(tmp_path, [PRUNE, {**LOW_RANK, "rank": 2}], "third.yaml")
    shares = run_cli("compress", third, cwd=tmp_path)
    assert shares.returncode == 0, shares.stderr
    assert "compress-3" in shares.stderr and "first 1 stage" in shares.stderr
    copied = tmp_path / "runs/base/compress-3/1-prune"
    assert (copied.parent / "trained.json").read_text() == (root / "trained.json").read_text()
    assert load_file(copied / "model.safetensors").keys() == load_file(root / "1-prune/model.safetensors").keys()
    assert (root / "2-low_rank/stage.json").is_file()
