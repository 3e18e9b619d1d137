"""The structural and numeric stages of `mlrun compress`: prune_structured, low_rank, qat, cluster."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from tests.conftest import run_cli, tiny_config, write_config
from tests.test_compress import compress, trained, with_stages


def test_structured_low_rank_qat_cluster_chain_ends_in_a_verified_int8_onnx(tmp_path: Path) -> None:
    base = trained(tmp_path)  # mlp 16 -> 64 -> 32 -> 4
    stages = [
        {"name": "prune_structured", "ratio": 0.5, "finetune": {"train.epochs": 1}},
        {"name": "low_rank", "rank": 4, "finetune": False},
        {"name": "qat", "finetune": {"train.epochs": 1, "optimizer.lr": 1.0e-3}},
        {"name": "cluster", "clusters": 8, "finetune": {"train.epochs": 1}},
    ]
    result = compress(tmp_path, with_stages(tmp_path, base, stages), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["stages"]
    root = tmp_path / "runs/base/compress"

    # Structured: half the hidden units of each layer gone, recorded as edits, MACs down by more than half.
    pruned = load_file(root / "1-prune_structured/model.safetensors")
    assert pruned["blocks.0.0.weight"].shape == (32, 16) and pruned["blocks.1.0.weight"].shape == (16, 32)
    assert pruned["head.weight"].shape == (4, 16)
    edits = yaml.safe_load((root / "1-prune_structured/config.yaml").read_text())["model_edits"]
    assert {e["module"] for e in edits} == {"blocks.0.0", "blocks.1.0", "head"}
    assert rows[1]["macs"] < 0.5 * rows[0]["macs"]
    evaluated = run_cli("eval", root / "1-prune_structured", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["metrics"]["val/accuracy"] == pytest.approx(
        rows[1]["metrics"]["val/accuracy"], abs=1e-6
    )

    # Low rank: each hidden layer is two thin layers through rank 4; the output layer stays whole.
    thin = load_file(root / "2-low_rank/model.safetensors")
    assert thin["blocks.0.0.0.weight"].shape == (4, 16) and thin["blocks.0.0.1.weight"].shape == (32, 4)
    assert thin["blocks.1.0.0.weight"].shape == (4, 32) and "head.weight" in thin

    # QAT: converted back to plain layers, measured as int8, post-training int8 beside it.
    record = json.loads((root / "3-qat/stage.json").read_text())
    assert record["quantize"] == "int8" and "ptq_int8" in record["result"]["report"]
    assert not any("fake_quantizer" in key for key in load_file(root / "3-qat/model.safetensors"))

    # Cluster: at most 8 values per layer, stored as uint8 indices + codebooks.
    clustered = load_file(root / "4-cluster/model.safetensors")
    for key, tensor in clustered.items():
        if key.endswith("weight"):
            assert torch.unique(tensor).numel() <= 8, key
    from mlrun.models.packed_weights import read_packed

    packed = root / "4-cluster/compressed.safetensors"
    decoded = read_packed(packed)  # 3-bit indices + codebooks, decoded to exactly the stage's weights
    assert set(decoded) == set(clustered) and all(torch.equal(decoded[k], clustered[k]) for k in clustered)
    assert rows[4]["bytes"] == packed.stat().st_size
    assert rows[4]["quantize"] == "int8" and rows[4]["huffman_bytes"] < rows[0]["bytes"] / 8

    exported = run_cli("export", root / "4-cluster", "--format", "onnx", "--json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    report = json.loads(exported.stdout)
    assert report["quantize"] == "int8"  # a stage after qat exports int8 by default
    assert report["verification"]["class_agreement"] >= 0.9


def test_qat_fake_quantizes_linear_layers_and_converts_back() -> None:
    from mlrun.export.quantize import to_int8
    from mlrun.registry import techniques
    from mlrun.techniques.qat import convert

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    plain = model(x)
    techniques.build("qat", model)
    assert type(model[0]) is not nn.Linear  # swapped for a fake-quantized layer
    faked = model(x)
    assert not torch.equal(faked, plain) and torch.allclose(faked, plain, atol=0.05)  # rounded to the int8 grid
    deployed = copy.deepcopy(model)
    convert(deployed)
    to_int8(deployed, static=False)
    assert torch.allclose(faked, deployed(x), atol=1e-5)  # the very grid mlrun's int8 export runs on
    convert(model)
    assert type(model[0]) is nn.Linear and torch.equal(model(x), plain)


def test_weight_clustering_ties_weights_keeps_zeros_and_restores_its_assignments() -> None:
    from mlrun.registry import techniques

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[0].weight[:, :8] = 0.0  # pruned earlier
    clustering = techniques.build("weight_clustering", model, clusters=6)
    clustering.on_train_start(model)
    with torch.no_grad():  # an optimizer step moves every weight
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    clustering.on_step_end(model, None)
    for layer in (model[0], model[2]):
        assert torch.unique(layer.weight).numel() <= 6
    assert torch.equal(model[0].weight[:, :8], torch.zeros(64, 8))
    again = techniques.build("weight_clustering", model, clusters=6)
    again.load_state_dict(clustering.state_dict())
    assert all(torch.equal(again.assignments[k], v) for k, v in clustering.assignments.items())


def test_structured_pruning_of_heads_is_replayed_from_its_edits() -> None:
    from mlrun.compression.stage import StageContext
    from mlrun.data.bundle import DataMeta
    from mlrun.models.edits import apply_edits
    from mlrun.registry import models, stages

    meta = DataMeta(task="lm", input_shape=(16,), vocab_size=50, seq_len=16)
    settings = {"n_layer": 2, "n_head": 4, "n_embd": 32}
    torch.manual_seed(0)
    model = models.build("gpt", meta, **settings)
    tokens = torch.randint(0, 50, (2, 16))
    context = StageContext(
        config=None, meta=meta, example=tokens, source_run=Path("."), round=1, rounds=1, finetune_steps=0,
        evaluate=lambda model, quantize: {},
    )  # fmt: skip
    stage = stages.build("prune_structured", model, context, ratio=0.5, heads=0.5)
    assert [block.attn.heads for block in model.blocks] == [2, 2]
    assert model.blocks[0].attn.qkv.weight.shape == (48, 32)  # 3 x 2 heads x 8
    assert model.blocks[0].mlp[0].weight.shape == (64, 32)  # hidden units halved, residual width kept
    assert model.tok_emb.weight.shape == (50, 32)
    rebuilt = models.build("gpt", meta, **settings)
    apply_edits(rebuilt, stage.edits)
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    assert torch.equal(rebuilt(tokens), model(tokens))


def test_low_rank_at_full_rank_is_exact_and_energy_picks_the_rank() -> None:
    from mlrun.compression.stages.low_rank import factorize, rank_for_energy

    torch.manual_seed(0)
    layer = nn.Linear(24, 12)
    x = torch.randn(5, 24)
    assert torch.allclose(factorize(layer, 12)(x), layer(x), atol=1e-5)
    assert rank_for_energy(torch.tensor([3.0, 1.0, 1.0]), 0.8) == 1  # 9 of 11
    assert rank_for_energy(torch.tensor([3.0, 1.0, 1.0]), 0.85) == 2


def test_structural_stages_that_cannot_apply_exit_2(tmp_path: Path) -> None:
    base = trained(tmp_path)
    cases = {
        "ignored": ({"name": "prune_structured", "ignored": ["nothing*"]}, "nothing*"),
        "rank": ({"name": "low_rank", "rank": 30}, "no layer gets smaller"),
        "qat without fine-tuning": ({"name": "qat", "finetune": False}, "finetune"),
        "fold without norms": ({"name": "fold_batchnorm"}, "no batch norm whose only input"),
        "fold in rounds": ({"name": "fold_batchnorm", "rounds": 2}, "remove rounds"),
    }
    for label, (stage, message) in cases.items():
        result = compress(tmp_path, with_stages(tmp_path, base, [stage]))
        assert result.returncode == 2, (label, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (label, result.stderr)
    cnn = tiny_config(
        name="cnn",
        model={"name": "cnn", "channels": [4]},
        data={"name": "synthetic", "task": "images", "num_samples": 64, "image_size": 8, "channels": 1},
        compress=[{"name": "low_rank"}],
    )
    assert run_cli("train", write_config(tmp_path, cnn), cwd=tmp_path).returncode == 0
    result = compress(tmp_path, write_config(tmp_path, cnn))
    assert result.returncode == 2 and "no Linear or 1x1 Conv2d" in result.stderr, result.stderr


def test_fold_batchnorm_keeps_the_function_drops_the_norms_and_shrinks_the_packed_file(tmp_path: Path) -> None:
    cnn = tiny_config(
        name="cnn",
        model={"name": "cnn", "channels": [4, 8]},
        data={"name": "synthetic", "task": "images", "num_samples": 128, "image_size": 8, "channels": 1},
    )
    cnn["train"]["epochs"] = 2  # the norms' running statistics move away from 0 and 1
    path = write_config(tmp_path, cnn)
    assert run_cli("train", path, cwd=tmp_path, subprocess=False).returncode == 0
    cluster = {"name": "cluster", "clusters": 4, "finetune": False}
    plain = with_stages(tmp_path, path, [{"name": "prune", "sparsity": 0.5, "finetune": False}, cluster])
    assert compress(tmp_path, plain, subprocess=False).returncode == 0
    root = tmp_path / "runs/cnn/compress"
    packed_with_norms = (root / "2-cluster/compressed.safetensors").stat().st_size
    folded = with_stages(
        tmp_path, path, [{"name": "prune", "sparsity": 0.5, "finetune": False}, {"name": "fold_batchnorm"}, cluster]
    )
    result = compress(tmp_path, folded, "--json", subprocess=False)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["stages"]
    root = tmp_path / "runs/cnn/compress-2"  # a different chain goes beside the first

    # Exact: the folded model scores what the pruned one did, and is not fine-tuned (trait `exact`).
    assert rows[2]["metrics"]["val/loss"] == pytest.approx(rows[1]["metrics"]["val/loss"], rel=1e-5)
    assert not (root / "2-fold_batchnorm/train").exists()
    weights = load_file(root / "2-fold_batchnorm/model.safetensors")
    assert not any("running_mean" in key for key in weights)
    edits = yaml.safe_load((root / "2-fold_batchnorm/config.yaml").read_text())["model_edits"]
    assert [e["op"] for e in edits] == ["fold_norm", "fold_norm"]
    # Rebuilt from its config: the pruned zeros stay zeros through the per-channel scaling.
    evaluated = run_cli("eval", root / "2-fold_batchnorm", "--json", cwd=tmp_path, subprocess=False)
    reloaded = json.loads(evaluated.stdout)["metrics"]["val/loss"]
    assert reloaded == pytest.approx(rows[2]["metrics"]["val/loss"], rel=1e-6)
    assert (root / "3-cluster/compressed.safetensors").stat().st_size < packed_with_norms


def test_an_exact_stage_is_fine_tuned_only_when_asked_even_after_its_config_is_written_and_read() -> None:
    from mlrun.compression.run import fine_tunes, stage_key
    from mlrun.config.schema import StageSpec

    def read_back(spec: dict) -> StageSpec:  # as a run's config.yaml holds it, every default written out
        return StageSpec.model_validate(StageSpec.model_validate(spec).model_dump(mode="json"))

    assert not fine_tunes(read_back({"name": "fold_batchnorm"}))
    assert fine_tunes(read_back({"name": "fold_batchnorm", "finetune": {}}))
    assert fine_tunes(read_back({"name": "prune"}))
    assert not fine_tunes(read_back({"name": "prune", "finetune": False}))
    # A stage's key (which reuses finished stages) reads the default as what it means, so chains made
    # when the default was {} are still found.
    assert stage_key(StageSpec(name="prune"), "k") == stage_key(StageSpec(name="prune", finetune={}), "k")
    fold = StageSpec(name="fold_batchnorm")
    assert stage_key(fold, "k") == stage_key(StageSpec(name="fold_batchnorm", finetune=False), "k")


def test_folding_is_exact_for_linear_and_conv_norms_with_or_without_affine_and_skips_custom_sequentials() -> None:
    from mlrun.compression.stages.fold_batchnorm import foldable_pairs, folded

    torch.manual_seed(0)
    cases = [
        (nn.Linear(6, 4), nn.BatchNorm1d(4, affine=False), torch.randn(5, 6)),
        (nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4), torch.randn(5, 6)),
        (nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), torch.randn(5, 2, 6, 6)),
        (nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3, affine=False), torch.randn(5, 2, 9)),
    ]
    for layer, norm, x in cases:
        pair = nn.Sequential(layer, norm)
        for _ in range(3):  # running statistics away from 0 and 1
            pair(torch.randn_like(x) * 3 + 1)
        if norm.affine:
            nn.init.uniform_(norm.weight, 0.5, 2.0)
            nn.init.normal_(norm.bias)
        pair.eval()
        assert foldable_pairs(pair) == [("0", "1")]
        torch.testing.assert_close(folded(layer, norm)(x), pair(x), rtol=1e-5, atol=1e-5)

    class Reversed(nn.Sequential):  # its own forward: the children's order is not the computation's
        def forward(self, x):
            return self[0](self[1](x))

    assert foldable_pairs(nn.Sequential(Reversed(nn.Linear(4, 4), nn.BatchNorm1d(4)))) == []


def test_fold_batchnorm_folds_a_resnets_attribute_pairs_through_its_traced_graph() -> None:
    from mlrun.compression.stage import StageContext
    from mlrun.compression.stages.fold_batchnorm import fold_batchnorm, sequential_pairs
    from mlrun.data.bundle import DataMeta
    from mlrun.models.edits import apply_edits
    from mlrun.registry import models

    meta = DataMeta(task="classification", input_shape=(3, 8, 8), num_classes=4)
    torch.manual_seed(0)
    model = models.build("resnet", meta, depth=8, width=4)
    x = torch.randn(6, 3, 8, 8)
    for _ in range(3):
        model(x * 2 + 1)  # training mode: running statistics away from 0 and 1
    model.eval()
    expected = model(x)
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(sequential_pairs(model)) < len(norms)  # bn1/bn2 are attributes: only the trace finds them
    context = StageContext(None, meta, x, Path("."), 1, 1, 0, lambda *_: {})
    stage = fold_batchnorm(model, context)
    assert sorted(stage.report["folded"]) == sorted(norms) and stage.report["left_unfolded"] == []
    torch.testing.assert_close(stage.model(x), expected, rtol=1e-5, atol=1e-5)
    rebuilt = models.build("resnet", meta, depth=8, width=4)  # as a stage's config.yaml rebuilds it
    apply_edits(rebuilt, stage.edits)
    rebuilt.load_state_dict(stage.model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), expected, rtol=1e-5, atol=1e-5)
