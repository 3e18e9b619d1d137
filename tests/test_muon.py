"""Muon through the real CLI: the hidden/other split, training, exact resume, its state in the memory estimate."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mlrun.models.mlp import MLP
from mlrun.registry import optimizers
from tests.conftest import read_jsonl, run_cli, tiny_config, write_config
from tests.test_train import straight_and_resumed, train, weights

MUON = {"name": "muon", "lr": 3e-2}


def test_muon_takes_hidden_matrices_and_adamw_the_head_and_biases():
    model = MLP(16, [32, 32], 4, 0.0, "relu")
    optimizer = optimizers.build("muon", model, lr=1e-2)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["muon"]["algorithm"] == "muon"
    assert {id(p) for p in groups["muon"]["params"]} == {id(b[0].weight) for b in model.blocks}
    assert [id(p) for p in groups["decay"]["params"]] == [id(model.head.weight)]  # the output layer: AdamW
    assert all(p.ndim == 1 for p in groups["no_decay"]["params"])


def test_muon_params_patterns_override_the_rule_and_refuse_vectors(tmp_path):
    model = MLP(16, [32, 32], 4, 0.0, "relu")
    optimizer = optimizers.build("muon", model, lr=1e-2, muon_params=["blocks.1.*.weight"])
    muon_group = next(g for g in optimizer.param_groups if g["name"] == "muon")
    assert [id(p) for p in muon_group["params"]] == [id(model.blocks[1][0].weight)]
    config = tiny_config(name="vec", optimizer={**MUON, "muon_params": ["blocks.*"]})
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2
    assert "2-D weight matrices only" in result.stderr and "blocks.0.0.bias" in result.stderr
    assert "Traceback" not in result.stderr


def test_muon_trains_and_learns(tmp_path):
    result, run = train(tmp_path, tiny_config(name="learn", optimizer=MUON))
    assert result.returncode == 0, result.stderr
    losses = [line["train/loss"] for line in read_jsonl(run / "metrics.jsonl") if "train/loss" in line]
    assert losses[-1] < 0.5 * losses[0]
    assert json.loads((run / "summary.json").read_text())["final"]["val/accuracy"] > 0.5


@pytest.mark.e2e  # a run dies by SIGKILL
def test_muon_resume_after_sigkill_is_bit_identical(tmp_path):
    straight, run = straight_and_resumed(tmp_path, optimizer=MUON)
    a, b = weights(straight), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_memory_estimate_counts_one_buffer_for_muon_matrices_and_two_for_the_rest(tmp_path):
    config = tiny_config(name="mem", model={"name": "mlp", "hidden_sizes": [256, 256], "dropout": 0.0})
    result = run_cli(
        "profile", write_config(tmp_path, {**config, "optimizer": MUON}), "--steps", "2", "--warmup", "1",
        "--estimate", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    estimated, measured = figures["estimate_bytes"]["optimizer_state"], figures["memory_bytes"]["optimizer_state"]
    hidden = 256 * 256  # blocks.1's weight is Muon's; blocks.0's too (16 x 256)
    others = figures["memory_bytes"]["parameters"] // 4 - hidden - 16 * 256
    assert estimated == 4 * (hidden + 16 * 256) + 8 * others
    assert estimated <= measured <= estimated + 256  # plus AdamW's scalar step counts
    assert estimated < 0.6 * 8 * figures["memory_bytes"]["parameters"] // 4  # well under AdamW's 8 bytes each


@pytest.mark.parametrize("split", [None, ["blocks.0.0.weight"]])
def test_state_dict_round_trip_continues_exactly(split):
    def make():
        torch.manual_seed(0)
        model = MLP(16, [32, 32], 4, 0.0, "relu")
        return model, optimizers.build("muon", model, lr=1e-2, muon_params=split)

    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))

    def step(model, optimizer):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    model, optimizer = make()
    for _ in range(3):
        step(model, optimizer)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.load(_save(optimizer.state_dict()), weights_only=False)
    step(model, optimizer)
    again, again_optimizer = make()
    again.load_state_dict(saved)
    again_optimizer.load_state_dict(state)
    step(again, again_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def _save(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_param_group_rules_split_muon_and_adamw_groups_alike():
    from mlrun.config.schema import OptimizerSpec
    from mlrun.optim.param_groups import regroup

    model = MLP(16, [32, 32], 4, 0.0, "relu")
    optimizer = optimizers.build("muon", model, lr=1e-2)
    rule = {"match": "blocks.0.*", "lr_scale": 0.1}
    regroup(optimizer, model, OptimizerSpec.model_validate({"name": "muon", "lr": 1e-2, "param_groups": [rule]}))
    scaled = sorted((g["algorithm"], round(g["lr"], 9)) for g in optimizer.param_groups if "blocks.0.*" in g["name"])
    assert scaled == [("adamw", 1e-3), ("muon", 1e-3)]
    before = model.blocks[0][0].weight.detach().clone()
    nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
    optimizer.step()  # both engines step their own (split) groups
    assert not torch.equal(before, model.blocks[0][0].weight)
