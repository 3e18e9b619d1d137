"""SOAP, Shampoo and SophiaH (pytorch-optimizer) through the real CLI: train, resume bit-exactly, state estimated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlrun.memory.estimate import optimizer_state_estimate
from mlrun.memory.measure import optimizer_state_bytes
from mlrun.models.mlp import MLP
from mlrun.registry import optimizers
from tests.conftest import needs, read_jsonl, tiny_config
from tests.test_train import straight_and_resumed, train, weights

pytestmark = needs("pytorch_optimizer")

SETTINGS = {
    "soap": {"lr": 3e-2, "precondition_frequency": 3},
    "shampoo": {"lr": 0.3, "momentum": 0.9},
    "sophia": {"lr": 0.3, "update_period": 2},
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_trains_and_learns(tmp_path, name):
    result, run = train(tmp_path, tiny_config(name=name, optimizer={"name": name, **SETTINGS[name]}))
    assert result.returncode == 0, result.stderr
    losses = [line["train/loss"] for line in read_jsonl(run / "metrics.jsonl") if "train/loss" in line]
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.e2e  # a run dies by SIGKILL
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_resume_after_sigkill_is_bit_identical(tmp_path, name):
    straight, run = straight_and_resumed(tmp_path, optimizer={"name": name, **SETTINGS[name]})
    a, b = weights(straight), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", [*sorted(SETTINGS), "muon"])
def test_memory_estimate_equals_the_state_after_real_steps(name):
    torch.manual_seed(0)
    model = MLP(16, [48, 32], 4, 0.0, "relu")
    settings = SETTINGS.get(name, {"lr": 1e-2})
    optimizer = optimizers.build(name, model, **settings)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    for _ in range(4):  # past the first preconditioner / Hessian update
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=name == "sophia")
        optimizer.step()
    measured, estimated = optimizer_state_bytes(optimizer), optimizer_state_estimate(model, name, settings)
    assert estimated <= measured <= estimated + 8 * len(list(model.parameters()))  # + scalar step counts


def test_sophia_declares_that_its_step_needs_the_gradient_graph():
    assert optimizers.trait("sophia", "create_graph") is True
    assert not optimizers.trait("adamw", "create_graph", False)
