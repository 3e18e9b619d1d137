"""`prune_structured`: narrower layers through Torch-Pruning, recorded as model_edits that rebuild them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from tests.conftest import run_cli, tiny_config, write_config


def _shapes(path: Path) -> dict[str, list[int]]:
    with safe_open(str(path), "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration


def _train_and_compress(workdir: Path, config: dict) -> Path:
    path = write_config(workdir, config)
    trained = run_cli("train", path, cwd=workdir)
    assert trained.returncode == 0, trained.stderr
    done = run_cli("compress", path, cwd=workdir)
    assert done.returncode == 0, done.stderr
    return workdir / "runs" / config["name"] / "compress" / f"1-{config['compress'][0]['name']}"


def _resized(stage: Path) -> dict[str, dict]:
    """The last resize edit of each module, as the stage's config records them."""
    edits = yaml.safe_load((stage / "config.yaml").read_text())["model_edits"]
    return {e["module"]: e for e in edits if e["op"] == "resize"}


def _eval_matches_stage(workdir: Path, stage: Path, metric: str) -> None:
    evaluated = run_cli("eval", stage, "--json", cwd=workdir)
    assert evaluated.returncode == 0, evaluated.stderr
    recorded = json.loads((stage / "stage.json").read_text())["result"]["metrics"][metric]
    assert json.loads(evaluated.stdout)["metrics"][metric] == pytest.approx(recorded, rel=1e-4, abs=1e-4)


def test_prune_structured_narrows_mlp_in_rounds_and_the_stage_reloads(workdir):
    stage_spec = {"name": "prune_structured", "ratio": 0.5, "rounds": 2, "finetune": {"train.epochs": 1}}
    config = tiny_config(model={"name": "mlp", "hidden_sizes": [32, 16], "dropout": 0.0}, compress=[stage_spec])
    stage = _train_and_compress(workdir, config)
    edits = _resized(stage)
    assert edits["blocks.0.0"]["attributes"]["out_features"] == 16  # 32 * (1 - 0.5) after two rounds
    assert edits["blocks.1.0"]["attributes"]["out_features"] == 8
    shapes = _shapes(stage / "model.safetensors")
    assert shapes["blocks.0.0.weight"] == [16, 16] and shapes["blocks.1.0.weight"] == [8, 16]
    assert shapes["head.weight"] == [4, 8]  # the output layer keeps its classes, its inputs narrow
    record = json.loads((stage / "stage.json").read_text())
    trained = json.loads((stage.parent / "compress.json").read_text())["stages"][0]
    assert record["result"]["macs"] < 0.6 * trained["macs"]
    assert record["result"]["report"]["macs_after"] < record["result"]["report"]["macs_before"]
    _eval_matches_stage(workdir, stage, "val/accuracy")
    exported = run_cli("export", stage, "--format", "onnx", cwd=workdir)
    assert exported.returncode == 0, exported.stderr


def test_prune_structured_prunes_conv_channels_with_their_batch_norm(workdir):
    config = tiny_config(
        name="cnn",
        model={"name": "cnn", "channels": [8, 16], "dropout": 0.0},
        data={"name": "synthetic", "task": "images", "num_samples": 128, "image_size": 8, "channels": 1},
        train={"epochs": 1},
        compress=[{"name": "prune_structured", "ratio": 0.25, "finetune": {"train.epochs": 1}}],
    )
    stage = _train_and_compress(workdir, config)
    shapes = _shapes(stage / "model.safetensors")
    assert shapes["blocks.0.0.weight"] == [6, 1, 3, 3] and shapes["blocks.0.1.running_mean"] == [6]
    assert shapes["blocks.1.0.weight"] == [12, 6, 3, 3] and shapes["head.3.weight"][1] == 12
    _eval_matches_stage(workdir, stage, "val/accuracy")


def test_prune_structured_removes_gpt_heads_and_mlp_units_but_not_the_residual(workdir):
    config = tiny_config(
        name="gpt",
        model={"name": "gpt", "n_layer": 1, "n_head": 4, "n_embd": 16},
        data={"name": "synthetic", "task": "tokens", "num_samples": 64, "vocab_size": 32, "seq_len": 16},
        metrics=["perplexity"],
        train={"max_steps": 4, "log_every": "2st"},
        compress=[{"name": "prune_structured", "ratio": 0.5, "heads": 0.5, "finetune": {"train.max_steps": 2}}],
    )
    stage = _train_and_compress(workdir, config)
    edits = _resized(stage)
    assert edits["blocks.0.attn"]["attributes"] == {"heads": 2}
    shapes = _shapes(stage / "model.safetensors")
    assert shapes["blocks.0.attn.qkv.weight"] == [24, 16] and shapes["blocks.0.attn.proj.weight"] == [16, 8]
    assert shapes["blocks.0.mlp.0.weight"] == [32, 16]
    tied = shapes.get("tok_emb.weight") or shapes["lm_head.weight"]  # one tensor, stored once
    assert tied == [32, 16]  # the residual stream keeps its width
    _eval_matches_stage(workdir, stage, "val/perplexity")


def test_prune_structured_keeps_the_residual_of_a_feature_transformer(workdir):
    config = tiny_config(
        name="ft",
        model={"name": "transformer_classifier", "dim": 16, "depth": 1, "heads": 4, "dropout": 0.0},
        data={"name": "synthetic", "num_samples": 128, "num_features": 6, "num_classes": 3, "batch_size": 32},
        train={"epochs": 1},
        compress=[{"name": "prune_structured", "ratio": 0.5, "heads": 0.5, "finetune": False}],
    )
    stage = _train_and_compress(workdir, config)
    shapes = _shapes(stage / "model.safetensors")
    assert shapes["pos_emb"] == [1, 6, 16] and shapes["embed.weight"] == [6, 16]  # free parameters: kept
    assert shapes["blocks.0.attn.qkv.weight"] == [24, 16] and shapes["blocks.0.mlp.0.weight"] == [32, 16]
    _eval_matches_stage(workdir, stage, "val/accuracy")


def test_removed_heads_take_only_their_own_rows_and_columns():
    """Heads whose output projection is zero contribute nothing: removing them leaves the output unchanged,
    which holds only if q, k, v and proj lose the same heads' rows and columns."""
    from mlrun.compression.stage import StageContext
    from mlrun.compression.stages.prune_structured import prune_structured
    from mlrun.models.transformer import GPT

    torch.manual_seed(0)
    model = GPT(50, 16, 1, 4, 32, 0.0, True).eval()
    attn, size = model.blocks[0].attn, 8
    with torch.no_grad():
        for head in (0, 2):  # the least important heads: tiny q, k, v, and no way to the output
            for part in range(3):
                attn.qkv.weight[part * 32 + head * size : part * 32 + (head + 1) * size] *= 1e-3
            attn.proj.weight[:, head * size : (head + 1) * size] = 0
    tokens = torch.randint(0, 50, (2, 16))
    before = model(tokens)
    context = StageContext(None, None, tokens, Path("."), round=1, rounds=1, finetune_steps=0, evaluate=None)
    stage = prune_structured(model, context, ratio=0.0, heads=0.5)
    assert stage.report["heads"] == {"blocks.0.attn": 2} and attn.qkv.out_features == 48
    torch.testing.assert_close(model(tokens), before)


@pytest.mark.parametrize(
    ("hidden", "stage", "message"),
    [
        ([32], {"ratio": 0.99}, "layer 'blocks.0.0'"),
        ([], {"ratio": 0.5}, "nothing to prune"),
        ([32], {"ratio": 0.5, "heads": 0.5}, "no attention layer"),
    ],
)
def test_prune_structured_bad_input_exits_2_before_any_work(workdir, hidden, stage, message):
    config = tiny_config(model={"name": "mlp", "hidden_sizes": hidden}, train={"epochs": 1})
    config["compress"] = [{"name": "prune_structured", **stage}]
    path = write_config(workdir, config)
    assert run_cli("train", path, cwd=workdir).returncode == 0
    failed = run_cli("compress", path, cwd=workdir)
    assert failed.returncode == 2, failed.stderr
    assert "prune_structured" in failed.stderr and message in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (workdir / "runs" / "tiny" / "compress").exists()
