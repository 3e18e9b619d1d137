"""train.compile keeps eager names (checkpoints interchange both ways), regional compile, fp8 refusal off-GPU."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mlrun.engine.compile import compile_model
from mlrun.models.mlp import MLP
from tests.conftest import run_cli, tiny_config, write_config

# Tiny: compiling on CPU (inductor, a C++ compiler) is what takes the time, not the steps.
SMALL = {"name": "mlp", "hidden_sizes": [16, 16], "dropout": 0.0}


def compile_config(name: str, compile_mode, steps: int) -> dict:
    config = tiny_config(name=name, model=SMALL, scheduler={"name": "constant"}, tracking=["jsonl"])
    config["train"] = {"max_steps": steps, "log_every": "1st", "eval_every": "2st", "checkpoint_every": "1st"}
    config["train"]["compile"] = compile_mode
    return config


def train(tmp_path, config: dict, *args: str):
    result = run_cli("train", write_config(tmp_path, config, f"{config['name']}.yaml"), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "runs" / config["name"]


def test_compile_modes_compile_in_place_and_identical_blocks_share_one_graph():
    from torch._dynamo.testing import CompileCounter

    x = torch.randn(8, 16)
    names = [n for n, _ in MLP(16, [16] * 6, 4, 0.0, "relu").named_parameters()]
    # Regional: six nn.Sequential blocks (torch's own class), two graphs: the first block's input is
    # the data, the other five take an input that requires grad (a guard), and share one graph.
    for mode, graphs in [(True, 1), ("regional", 2), (False, 0)]:
        torch._dynamo.reset()
        model, counter = MLP(16, [16] * 6, 4, 0.0, "relu"), CompileCounter()
        compile_model(model, mode, backend=counter)
        model(x)
        assert counter.frame_count == graphs, mode
        assert [n for n, _ in model.named_parameters()] == names


def test_compiled_checkpoint_resumes_eager_and_eager_resumes_regional(tmp_path):
    compiled = train(tmp_path, compile_config("compiled", True, 2))
    checkpoint = compiled / "checkpoints" / "step-00000001"
    assert not any("_orig_mod" in key for key in load_file(checkpoint / "model.safetensors"))
    assert not any("_orig_mod" in key for key in load_file(compiled / "model.safetensors"))
    final = load_file(compiled / "model.safetensors")
    # The compiled run's checkpoint, continued eager, ends where the compiled run ended.
    eager = train(tmp_path, compile_config("compiled", False, 2), "--resume", str(checkpoint))
    resumed = load_file(eager / "model.safetensors")
    assert final.keys() == resumed.keys()
    assert all(torch.allclose(final[k], resumed[k], atol=1e-6) for k in final)
    # And the reverse: an eager checkpoint continued with its blocks compiled.
    plain = train(tmp_path, compile_config("plain", False, 2))
    plain_final = load_file(plain / "model.safetensors")
    regional = train(
        tmp_path, compile_config("plain", "regional", 2), "--resume", str(plain / "checkpoints" / "step-00000001")
    )
    again = load_file(regional / "model.safetensors")
    assert all(torch.allclose(plain_final[k], again[k], atol=1e-6) for k in plain_final)


@pytest.mark.parametrize("command", ["train", "profile"])
def test_fp8_off_a_capable_gpu_is_exit_2_naming_the_gpus_that_have_it(tmp_path, cpu_only, command):
    config = tiny_config(name="fp8")
    config["train"] = {**config["train"], "precision": "fp8"}
    result = run_cli(command, write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "compute capability 8.9" in result.stderr and "H100" in result.stderr and "bf16" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "fp8" / "checkpoints").exists()


@pytest.mark.e2e  # each start must be a fresh process: in-process, torch.compile's caches outlive a run
def test_compile_cache_in_the_run_directory_makes_a_resume_on_a_fresh_machine_hit(tmp_path, monkeypatch):
    # Each start gets an empty local Inductor cache, as a requeued job on another node would.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-first"))
    run = train(tmp_path, compile_config("cached", True, 2))
    assert (run / "compile_cache.bin").stat().st_size > 0
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-second"))
    train(tmp_path, compile_config("cached", True, 3), "--resume", str(run / "checkpoints" / "step-00000002"))
    first, second = json.loads((run / "compile_cache.json").read_text())
    assert first["loaded_bytes"] == 0 and first["fxgraph_cache_miss"] > 0 and first["fxgraph_cache_hit"] == 0
    assert second["loaded_bytes"] > 0
    assert second["fxgraph_cache_hit"] >= first["fxgraph_cache_miss"] and second["fxgraph_cache_miss"] == 0


def test_fp8_on_a_gpu_without_float8_tensor_cores_names_its_capability(monkeypatch):
    from mlrun.engine.fp8 import check_fp8_device
    from mlrun.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(UsageError, match=r"A100-SXM4-80GB has compute capability 8\.0.*bf16"):
        check_fp8_device()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # H100, H200
    check_fp8_device()
