"""The model contract through the real CLI: transformers models from local folders, batches of named
tensors, objectives, the validate dry-run's mismatch messages, and user code next to the config."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, make_tiny_hf, needs, read_jsonl, run_cli, tiny_config, write_config

pytestmark = needs("transformers")

DIGITS_TEXT = str(REPO / "configs/data/digits_ascii.jsonl")
PUBLIC_DOMAIN = str(REPO / "configs/data/public_domain.txt")


def train(tmp_path: Path, config: dict, *args: str, **run):
    path = write_config(tmp_path, config, f"{config['name']}.yaml")
    return run_cli("train", path, *args, cwd=tmp_path, **run), tmp_path / "runs" / config["name"]


def without_timing(lines: list[dict]) -> list[dict]:
    drop = ("time", "train/samples_per_s", "train/data_wait_fraction")
    return [{k: v for k, v in line.items() if k not in drop} for line in lines]


def bert_config(name: str, folder: Path, armed_file: Path) -> dict:
    return tiny_config(
        name=name,
        model={"name": "transformers", "path": str(folder), "task": "sequence_classification"},
        data={"name": "jsonl_text", "path": DIGITS_TEXT, "tokenizer": str(folder), "max_length": 80, "batch_size": 16},
        optimizer={"name": "adamw", "lr": 2e-3},
        train={"max_steps": 10, "log_every": "2st", "eval_every": "5st", "checkpoint_every": "4st"},
        techniques=[{"name": "tests.fixtures:kill_at_step", "step": 6, "armed_file": str(armed_file)}],
    )


@pytest.mark.e2e  # a run dies by SIGKILL
def test_tiny_bert_fine_tunes_from_its_folder_resumes_bit_exactly_and_exports_int8_onnx(tmp_path):
    # The script as a README user runs it (other tests copy one built in the test process).
    folder = tmp_path / "tiny-bert"
    command = [sys.executable, str(REPO / "scripts/make_tiny_hf.py"), "--kind", "bert", "--out", str(folder)]
    made = subprocess.run([*command, "--corpus", DIGITS_TEXT], capture_output=True, text=True)
    assert made.returncode == 0 and "wrote bert" in made.stdout, made.stderr
    # Only the run that dies needs a process of its own; the others run in this one.
    straight_result, straight = train(tmp_path, bert_config("straight", folder, tmp_path / "never"), subprocess=False)
    assert straight_result.returncode == 0, straight_result.stderr
    armed = tmp_path / "armed"
    armed.touch()
    killed, run = train(tmp_path, bert_config("resumed", folder, armed), subprocess=True)
    assert killed.returncode == -signal.SIGKILL  # after step 6; the newest checkpoint is step 4
    resumed, _ = train(tmp_path, bert_config("resumed", folder, armed), subprocess=False)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(straight / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert without_timing(read_jsonl(run / "metrics.jsonl")) == without_timing(read_jsonl(straight / "metrics.jsonl"))
    # The pretrained encoder was loaded: its embeddings started from the folder's, not a fresh draw.
    start = load_file(folder / "model.safetensors")
    embedding = "bert.embeddings.word_embeddings.weight"
    assert (a[embedding] - start[embedding]).abs().max() < 0.1

    evaluated = run_cli("eval", run, "--json", cwd=tmp_path, subprocess=False)
    assert evaluated.returncode == 0, evaluated.stderr
    final = json.loads((run / "summary.json").read_text())["final"]
    assert json.loads(evaluated.stdout)["metrics"]["val/accuracy"] == pytest.approx(final["val/accuracy"])

    exported = run_cli(
        "export", run, "--format", "onnx", "--quantize", "int8", "--json", cwd=tmp_path, subprocess=False
    )
    assert exported.returncode == 0, exported.stderr
    info = json.loads(exported.stdout.strip().splitlines()[-1])
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask"]
    assert info["verification"]["class_agreement"] >= 0.95
    assert (run / "export/onnx-int8/tokenizer/tokenizer.json").is_file()


def test_gpt2_style_causal_lm_learns_next_bytes_of_public_domain_text(tmp_path):
    folder = make_tiny_hf(tmp_path / "tiny-gpt2", "gpt2", PUBLIC_DOMAIN)
    config = tiny_config(
        name="lm",
        model={"name": "transformers", "path": str(folder)},
        objective="causal_lm",
        data={"name": "text_lm", "path": PUBLIC_DOMAIN, "tokenizer": str(folder), "block_size": 64, "batch_size": 16},
        metrics=["perplexity"],
        optimizer={"name": "adamw", "lr": 3e-3},
        train={"max_steps": 40, "log_every": "10st", "eval_every": "40st"},
    )
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    final = json.loads((run / "summary.json").read_text())["final"]
    # Uniform guessing scores log(vocab) nats; the character frequencies alone are far below that.
    assert final["val/loss"] < 0.85 * math.log(vocab)
    assert final["val/perplexity"] == pytest.approx(math.exp(final["val/loss"]), rel=1e-3)


def test_two_input_model_on_named_tensors_trains_evaluates_and_exports(tmp_path):
    result = run_cli("train", REPO / "configs/two_input.yaml", f"output_dir={tmp_path}/runs", cwd=REPO)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs/two_input"
    assert json.loads((run / "summary.json").read_text())["final"]["val/accuracy"] > 0.9
    exported = run_cli("export", run, "--format", "onnx", "--json", cwd=REPO)
    assert exported.returncode == 0, exported.stderr
    info = json.loads(exported.stdout.strip().splitlines()[-1])
    assert [i["name"] for i in info["inputs"]] == ["image", "features"]
    assert "session.run(None, {'image': image, 'features': features})" in info["how_to_load"]  # by its names
    assert info["verification"]["max_abs_diff"] < 1e-3


def float_label_table(folder: Path) -> Path:
    """A CSV whose 0/1 labels are written as floats (0.0, 1.0): read as a regression target."""
    rows = ["a,b,target"] + [f"{i % 7},{(i * 3) % 5},{float(i % 2)}" for i in range(200)]
    path = folder / "table.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"model": {"name": "cnn"}}, "model 'cnn' needs (C, H, W) images"),
        ({"loss": "bce_with_logits"}, "for 4 classes use loss: cross_entropy"),
        ({"data": "regression", "metrics": ["accuracy"]}, "metrics: 'accuracy' scores classification"),
        ({"data": "regression", "metrics": []}, "loss 'cross_entropy' needs class ids"),
        (
            {"data": {"name": "synthetic", "task": "regression", "num_samples": 64}, "metrics": ["mae"]},
            "loss 'cross_entropy' scores classes, but data 'synthetic' is a regression task",
        ),
    ],
    ids=[
        "cnn-on-flat-features",
        "bce-on-4-classes",
        "accuracy-on-regression",
        "cross-entropy-on-float-labels",
        "cross-entropy-on-regression",
    ],
)
def test_validate_names_parts_that_do_not_fit(tmp_path, sections, expected):
    if sections.get("data") == "regression":
        sections["data"] = {"name": "csv", "path": str(float_label_table(tmp_path)), "target": "target"}
    path = write_config(tmp_path, tiny_config(**sections))
    result = run_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # validate writes nothing


def test_validate_runs_one_forward_and_backward(tmp_path):
    result = run_cli("validate", write_config(tmp_path, tiny_config()), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "one batch ran forward and backward" in result.stdout


def test_model_loss_objective_refuses_a_configured_loss(tmp_path):
    path = write_config(tmp_path, tiny_config(objective="model_loss", loss="mse"))
    result = run_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2 and "would be ignored" in result.stderr


@pytest.mark.e2e  # the installed `mlrun` console script
def test_user_model_module_resolves_from_the_working_directory(tmp_path):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\n"
        "def tiny(meta, /, *, width: int = 8):\n"
        "    layers = [nn.Linear(meta.input_shape[0], width), nn.ReLU(), nn.Linear(width, meta.num_classes)]\n"
        "    return nn.Sequential(*layers)\n"
    )
    config = tiny_config(model={"name": "my_models:tiny", "width": 8}, train={"max_steps": 3})
    path = write_config(tmp_path, config)
    # The installed `mlrun` script, as a user runs it: unlike `python -m`, it does not put the working
    # directory on sys.path by itself.
    script = Path(sys.executable).with_name("mlrun")
    if not script.exists():
        pytest.skip("no installed mlrun script next to this Python")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([str(script), "train", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs/tiny/model.safetensors").is_file()


def test_profile_times_the_step_train_runs_callbacks_included(tmp_path):
    count = tmp_path / "steps.txt"
    config = tiny_config(techniques=[{"name": "tests.fixtures:count_steps", "count_file": str(count)}])
    result = run_cli("profile", write_config(tmp_path, config), "--steps", "3", "--warmup", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # warm-up + measured steps + the one step whose live tensors give the CPU peak
    assert int(count.read_text()) == 2 + 3 + 1


def test_resuming_an_auto_batch_run_keeps_an_epochs_override(tmp_path):
    config = tiny_config(train={"epochs": 1, "log_every": "5st"})
    config["data"]["batch_size"] = "auto"
    config["train"]["memory_budget_gb"] = 0.01
    first, run = train(tmp_path, config)
    assert first.returncode == 0, first.stderr
    batch_size = yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"]
    steps_per_epoch = json.loads((run / "summary.json").read_text())["steps"]
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    more, _ = train(tmp_path, config, "--resume", str(checkpoint), "train.epochs=2")
    assert more.returncode == 0, more.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 * steps_per_epoch and isinstance(batch_size, int)


def test_transformer_classifier_ignores_padding():
    from mlrun.data.bundle import DataMeta
    from mlrun.registry import models

    meta = DataMeta(task="classification", input_shape=(12,), num_classes=3, vocab_size=50, seq_len=12)
    model = models.build("transformer_classifier", meta, dim=16, depth=2, heads=2, dropout=0.0).eval()
    ids = torch.randint(1, 50, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[:, 7:] = 0
    other_padding = ids.clone()
    other_padding[:, 7:] = torch.randint(1, 50, (4, 5))
    with torch.no_grad():
        assert torch.allclose(model(ids, mask), model(other_padding, mask), atol=1e-6)
        assert not torch.allclose(model(ids), model(other_padding), atol=1e-6)


def test_layer_decay_and_gradual_unfreezing_reach_a_bert_models_layers(tmp_path):
    """transformers models get `blocks` from their own structure (BertForSequenceClassification: bert.encoder.layer)."""
    folder = make_tiny_hf(tmp_path / "tiny-bert", "bert", DIGITS_TEXT)
    config = tiny_config(
        name="bert",
        model={"name": "transformers", "path": str(folder), "task": "sequence_classification"},
        data={"name": "jsonl_text", "path": DIGITS_TEXT, "tokenizer": str(folder), "max_length": 80, "batch_size": 16},
        optimizer={"name": "adamw", "lr": 1e-3, "layer_decay": 0.5},
        train={"max_steps": 6, "log_every": "2st", "eval_every": "6st", "checkpoint_every": None},
        techniques=[{"name": "freeze", "but_head": True, "unfreeze_every": "2st"}],
    )
    path = write_config(tmp_path, config)
    groups = run_cli("validate", path, "--print", cwd=tmp_path)
    assert groups.returncode == 0, groups.stderr[-2000:]
    # embeddings (layer 0), the 2 BertLayers (1, 2), pooler and classifier (3): lr halves per layer down.
    assert re.search(r"decay layer 1/3 +6 +[\d,]+ +0\.00025 ", groups.stderr), groups.stderr
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "released 1/3 groups" in result.stdout and "released 3/3 groups" in result.stdout
    saved = load_file(run / "model.safetensors")
    assert not any(key.startswith("blocks.") for key in saved)  # parameter names stay the model's own
