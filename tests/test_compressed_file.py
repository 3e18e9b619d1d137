"""The packed file of a cluster stage: bit-packed indices round-trip exactly, eval/predict/export load it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mlrun.models.packed_weights import (
    COLUMNS,
    gap_codes,
    gap_positions,
    pack_bits,
    pack_state,
    read_packed,
    unpack_bits,
)
from tests.conftest import run_cli
from tests.test_compress import compress, trained, with_stages


def clustered(shape: tuple[int, ...], clusters: int, sparsity: float = 0.0, seed: int = 0) -> torch.Tensor:
    """A weight holding exactly `clusters` values (zero among them when sparsity > 0)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(clusters, generator=generator)
    if sparsity:
        values[0] = 0.0
    index = torch.randint(1 if sparsity else 0, clusters, shape, generator=generator)
    index[torch.rand(shape, generator=generator) < sparsity] = 0
    index.view(-1)[:clusters] = torch.arange(clusters)  # every value used once at least
    return values[index]


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("count", [0, 1, 7, 13, 1001])
def test_bit_packing_round_trips_any_width_and_length(bits: int, count: int) -> None:
    values = np.random.default_rng(bits * count).integers(0, 1 << bits, count)
    data = pack_bits(values, bits)
    assert data.dtype == np.uint8 and data.size == math.ceil(count * bits / 8)  # no padding past the last byte
    assert np.array_equal(unpack_bits(data, bits, count), values)


@pytest.mark.parametrize("clusters", [2, 16, 32, 256])
@pytest.mark.parametrize("shape", [(37, 11), (10, 3, 3, 3), (256, 64)])  # 407 and 270 weights: not whole bytes
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_packed_weights_decode_to_the_same_weights_at_log2_k_bits(clusters, shape, sparsity) -> None:
    weight = clustered(shape, clusters, sparsity)
    bias = torch.randn(shape[0])
    packed = pack_state({"layer.weight": weight, "layer.bias": bias})
    state = read_packed_bytes(packed.to_bytes())
    assert torch.equal(state["layer.weight"], weight) and state["layer.weight"].shape == weight.shape
    assert torch.equal(state["layer.bias"], bias)
    entry = dict(zip(COLUMNS, packed.rows[0]))
    total = weight.numel()
    if entry["layout"] == "dense":
        assert entry["bits"] == math.ceil(math.log2(clusters)) and entry["count"] == total
    else:  # pruned: indices of the non-zero weights only, into the K - 1 non-zero values
        assert sparsity and entry["bits"] == max(1, math.ceil(math.log2(clusters - 1)))
        assert entry["count"] == int((weight != 0).sum())
    # Every packed stream together is never larger than dense indices at ceil(log2 K) bits.
    assert packed.tensors["streams"].numel() <= math.ceil(total * math.ceil(math.log2(clusters)) / 8)
    # The values are the codebook and the bias, nothing else: the weight itself is not stored.
    assert packed.tensors["values.float32"].numel() == entry["clusters"] + bias.numel()


def test_relative_positions_skip_long_runs_of_zeros() -> None:
    positions = np.array([0, 3, 4, 40, 41, 300])
    for bits in range(1, 9):
        assert np.array_equal(gap_positions(gap_codes(positions, bits), bits), positions)


def read_packed_bytes(data: bytes) -> dict[str, torch.Tensor]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "compressed.safetensors"
        path.write_bytes(data)
        return read_packed(path)


def test_eval_predict_and_export_of_a_pruned_cluster_stage_use_the_compressed_file(tmp_path: Path) -> None:
    base = trained(tmp_path)
    stages = [
        {"name": "prune", "sparsity": 0.8, "schedule": "one_shot", "finetune": False},
        {"name": "cluster", "clusters": 8, "finetune": {"train.epochs": 1}},
    ]
    result = compress(tmp_path, with_stages(tmp_path, base, stages), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["stages"]
    stage = tmp_path / "runs/base/compress/2-cluster"
    packed = stage / "compressed.safetensors"

    # The file is the stage's size and decodes to exactly the stage's dense weights.
    assert rows[2]["bytes"] == rows[2]["file_bytes"] == packed.stat().st_size
    trained_file = (tmp_path / "runs/base/model.safetensors").stat().st_size
    assert rows[2]["vs_trained"]["smaller_file"] == pytest.approx(trained_file / packed.stat().st_size)
    assert rows[2]["vs_trained"]["smaller_file"] > 4  # past one byte a weight (a tiny model: the header weighs)
    dense, decoded = load_file(stage / "model.safetensors"), read_packed(packed)
    assert set(dense) == set(decoded) and all(torch.equal(dense[k], decoded[k]) for k in dense)

    evaluated = run_cli("eval", stage, "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["weights"] == str(packed)
    assert report["metrics"]["val/accuracy"] == pytest.approx(rows[2]["metrics"]["val/accuracy"], abs=1e-9)
    assert report["metrics"]["val/loss"] == pytest.approx(rows[2]["metrics"]["val/loss"], rel=1e-6)

    exported = run_cli("export", stage, "--format", "onnx", "--json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["verification"]["class_agreement"] == 1.0

    # A damaged file: exit 2 naming it, from eval and from predict.
    data = bytearray(packed.read_bytes())
    data[-5] ^= 0xFF  # a bit flip in the last payload
    packed.write_bytes(bytes(data))
    for command in (["eval", stage], ["predict", stage, tmp_path / "missing.csv"]):
        broken = run_cli(*command, cwd=tmp_path)
        assert broken.returncode == 2, broken.stderr
        assert "compressed.safetensors" in broken.stderr and "damaged" in broken.stderr
        assert "Traceback" not in broken.stderr


def test_a_truncated_unknown_version_or_unmarked_file_exits_2_naming_it(tmp_path: Path) -> None:
    base = trained(tmp_path)
    config = with_stages(tmp_path, base, [{"name": "cluster", "clusters": 4, "finetune": False}])
    assert compress(tmp_path, config).returncode == 0
    stage = tmp_path / "runs/base/compress/1-cluster"
    packed = stage / "compressed.safetensors"
    original = packed.read_bytes()
    tensors = load_file(packed)
    from safetensors import safe_open

    with safe_open(str(packed), "pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(packed), {**metadata, "version": "99"})
    unknown = run_cli("eval", stage, cwd=tmp_path)
    assert unknown.returncode == 2 and "version '99'" in unknown.stderr and str(packed.name) in unknown.stderr
    save_file(tensors, str(packed))  # no format in its metadata: an older mlrun's file, or another tool's
    older = run_cli("eval", stage, cwd=tmp_path)
    assert older.returncode == 2 and "not a packed weights file" in older.stderr and packed.name in older.stderr
    packed.write_bytes(original[: len(original) // 2])
    truncated = run_cli("eval", stage, "--checkpoint", "compressed", cwd=tmp_path)
    assert truncated.returncode == 2 and "compressed.safetensors" in truncated.stderr
    assert "Traceback" not in truncated.stderr + unknown.stderr + older.stderr


@pytest.mark.parametrize("offset", [-1, -300, -600])  # in each of the two file tensors
def test_a_flipped_bit_anywhere_in_the_payload_is_a_damaged_file(offset: int) -> None:
    from mlrun.errors import UsageError

    packed = pack_state({"layer.weight": clustered((64, 48), 16, 0.9), "layer.bias": torch.randn(64)})
    data = bytearray(packed.to_bytes())
    assert len(data) - 600 > len(data) - sum(t.numel() * t.element_size() for t in packed.tensors.values())
    data[offset] ^= 0x10
    with pytest.raises(UsageError, match="compressed.safetensors.*damaged"):
        read_packed_bytes(bytes(data))
