"""The CUDA paths through the real CLI: mixed precision, loss scaling, auto batch size against real
out-of-memory errors, torch.compile, device copies, pinned loaders, exact resume, FSDP and torchrun.

Every test is marked `gpu` and skips where torch sees no CUDA device. On a GPU machine:
    pytest -m gpu            (or scripts/gpu/run_all.sh tests, which also runs the whole suite on CUDA)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, read_jsonl, run_cli, tiny_config, write_config
from tests.test_distributed import free_port
from tests.test_train import PROBE, exact_resume_config, straight_and_resumed, summary, train, weights

pytestmark = pytest.mark.gpu

MiB = 2**20


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def by_step(lines: list[dict]) -> dict[int, dict]:
    """The training log lines of metrics.jsonl, keyed by optimizer step."""
    return {line["step"]: line for line in lines if "train/loss" in line}


def torchrun_train(folder: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    """`mlrun train` as one process under torch.distributed.run: LOCAL_RANK set, a process group of one."""
    path = write_config(folder, config, f"{config['name']}.yaml")
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port())]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *launcher, "-m", "mlrun", "train", str(path), *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


# --- precision ---------------------------------------------------------------------------------


def test_bf16_trains_on_cuda_under_autocast(tmp_path):
    probe = tmp_path / "dtype.json"
    config = tiny_config(name="bf16", model={"name": PROBE, "dtype_file": str(probe)})
    result, run = train(tmp_path, config, "train.precision=bf16")
    assert result.returncode == 0, result.stderr
    assert json.loads(probe.read_text()) == {"dtype": "torch.bfloat16", "autocast": True}  # computed in bf16 on CUDA
    assert manifest(run)["device"].startswith("cuda") and manifest(run)["precision"] == "bf16"
    done = summary(run)
    assert done["final"]["val/accuracy"] > 0.5 and done["overflow_skipped"] == 0  # bf16 needs no loss scaling
    assert done["peak_memory_bytes"] > 0  # the CUDA allocator's peak


def test_fp16_overflow_skips_the_step_and_is_counted(tmp_path):
    # At training forwards 20 and 30 the output's gradient is multiplied by 1e12: the loss stays finite,
    # the scaled gradients overflow fp16, and the grad scaler must skip those optimizer steps.
    probe = tmp_path / "dtype.json"
    config = tiny_config(name="fp16", model={"name": PROBE, "dtype_file": str(probe), "overflow_at": [20, 30]})
    config["train"] = {**config["train"], "log_every": "1st"}
    result, run = train(tmp_path, config, "train.precision=fp16")
    assert result.returncode == 0, result.stderr
    assert json.loads(probe.read_text()) == {"dtype": "torch.float16", "autocast": True}
    steps = by_step(read_jsonl(run / "metrics.jsonl"))
    overflows = {step: line.get("train/overflow_skipped", 0) for step, line in steps.items()}
    lr = {step: line["train/lr"] for step, line in steps.items()}
    for step in (20, 30):
        assert overflows[step] == overflows[step - 1] + 1, f"step {step} was not counted as an overflow"
        assert lr[step] == lr[step - 1]  # a skipped step does not advance the schedule
    done = summary(run)
    assert done["overflow_skipped"] == overflows[max(overflows)] >= 2
    assert done["status"] == "completed" and done["final"]["val/accuracy"] > 0.5  # loss scaling recovered
    assert all(torch.isfinite(t).all() for t in weights(run).values())


# --- device copies and loaders -------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_direct_loop_on_cuda_trains_like_the_cpu(tmp_path, monkeypatch, workers):
    # fp32, one process, no accumulation: the loop's direct path, whose batches to_device copies to the
    # GPU with non_blocking from pinned memory. SGD keeps CPU/GPU rounding differences linear.
    config = tiny_config(name="direct", optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    config["data"] = {**config["data"], "num_workers": workers}
    result, gpu_run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert manifest(gpu_run)["device"].startswith("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpu_result, cpu_run = train(tmp_path, {**config, "name": "direct_cpu"})
    assert cpu_result.returncode == 0, cpu_result.stderr
    assert manifest(cpu_run)["device"] == "cpu"
    a, b = weights(gpu_run), weights(cpu_run)
    assert a.keys() == b.keys()
    for key in a:  # a batch copied late, twice or out of order would move these far apart
        assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-4), key


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_pin_host_memory_by_default_on_cuda(workers):
    from mlrun.config.schema import DataSpec
    from mlrun.data.synthetic import synthetic
    from mlrun.engine.batches import eval_loader, to_device, train_loader

    bundle = synthetic(0, num_samples=256)
    spec = DataSpec(name="synthetic", batch_size=32, num_workers=workers)
    loader, _ = train_loader(bundle.train, spec, 0, on_cuda=True, sharded=False)
    inputs, targets = next(iter(loader))
    assert inputs.is_pinned() and targets.is_pinned()
    moved = to_device((inputs, targets), torch.device("cuda"))
    torch.cuda.synchronize()  # the copies were non_blocking
    assert all(t.is_cuda for t in moved)
    assert torch.equal(moved[0].cpu(), inputs) and torch.equal(moved[1].cpu(), targets)
    assert next(iter(eval_loader(bundle.val, spec, on_cuda=True)))[0].is_pinned()
    unpinned, _ = train_loader(bundle.train, spec.model_copy(update={"pin_memory": False}), 0, on_cuda=True)
    assert not next(iter(unpinned))[0].is_pinned()  # data.pin_memory: false is obeyed


# --- auto batch size, compile --------------------------------------------------------------------


def test_auto_batch_size_backs_off_from_real_cuda_out_of_memory(tmp_path):
    # One hidden layer of 2**20 units: each sample keeps a 4 MiB ReLU output for backward (~12 MiB at the
    # peak), so the search runs out of device memory at a few thousand samples, long before the data ends.
    # The budget is above the device's memory: every "does not fit" the search meets is a real CUDA OOM.
    total = torch.cuda.get_device_properties(0).total_memory
    width = 2**20
    config = tiny_config(
        name="autobatch",
        model={"name": "mlp", "hidden_sizes": [width], "dropout": 0.0},
        data={"name": "synthetic", "num_samples": 40000, "num_features": 16, "batch_size": "auto"},
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.0},  # no optimizer state: the search's peak is the step's
    )
    config["data"]["eval_batch_size"] = 256  # evaluation's default, 4x the batch found, would not fit
    config["train"] = {
        "max_steps": 3,
        "log_every": "1st",
        "eval_every": "3st",
        "checkpoint_every": "3st",
        "memory_budget_gb": total / 2**30 + 1,
    }
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr  # the batch found also trains
    found = yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"]
    assert f"data.batch_size: auto -> {found}" in result.stdout and "on cuda" in result.stdout
    assert isinstance(found, int) and found < 32000  # stopped by memory, not by the 32000 training samples
    assert 4 * MiB <= total / found <= 32 * MiB, f"{found} samples for {total / 2**30:.0f} GiB"
    assert summary(run)["status"] == "completed"


def test_compile_trains_on_cuda(tmp_path, monkeypatch):
    cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))  # where Inductor writes the kernels it generates
    compiled, run = train(tmp_path, tiny_config(name="compiled"), "train.compile=true", "train.epochs=2")
    assert compiled.returncode == 0, compiled.stderr
    eager, eager_run = train(tmp_path, tiny_config(name="eager"), "train.epochs=2")
    assert eager.returncode == 0, eager.stderr
    assert any(p.is_file() for p in cache.rglob("*")), "torch.compile generated no kernel"
    assert not any(k.startswith("_orig_mod") for k in weights(run))  # saved without the compile wrapper
    accuracy = summary(run)["final"]["val/accuracy"]
    assert accuracy > 0.5 and abs(accuracy - summary(eager_run)["final"]["val/accuracy"]) < 0.05


def test_regional_compile_trains_on_cuda_with_eager_names(tmp_path):
    config = tiny_config(name="regional", model={"name": "mlp", "hidden_sizes": [64, 64], "dropout": 0.0})
    result, run = train(tmp_path, config, "train.compile=regional", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert sorted(weights(run)) == ["blocks.0.0.bias", "blocks.0.0.weight", "blocks.1.0.bias", "blocks.1.0.weight",
                                    "head.bias", "head.weight"]  # fmt: skip
    assert summary(run)["final"]["val/accuracy"] > 0.5


# --- fp8 and Muon ---------------------------------------------------------------------------------

FP8_MODEL = {"name": "mlp", "hidden_sizes": [256, 256], "dropout": 0.0}  # dims multiples of 16


def test_fp8_trains_hidden_layers_in_float8_and_keeps_weight_names(tmp_path):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9+")
    pytest.importorskip("torchao.float8")
    config = tiny_config(name="fp8", model=FP8_MODEL)
    config["train"] = {**config["train"], "precision": "fp8", "epochs": 3}
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert "fp8: 2 of 3 Linear layers compute in float8" in result.stderr  # the head stays in bf16
    bf16, bf16_run = train(tmp_path, {**config, "name": "bf16", "train": {**config["train"], "precision": "bf16"}})
    assert bf16.returncode == 0, bf16.stderr
    assert weights(run).keys() == weights(bf16_run).keys()
    accuracy = summary(run)["final"]["val/accuracy"]
    assert accuracy > 0.5 and abs(accuracy - summary(bf16_run)["final"]["val/accuracy"]) < 0.1
    checkpoint = sorted((run / "checkpoints").iterdir())[0]
    resumed, _ = train(tmp_path, config, "train.epochs=4", "--resume", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr


def test_fp8_with_compile_trains(tmp_path):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9+")
    pytest.importorskip("torchao.float8")
    config = tiny_config(name="fp8c", model=FP8_MODEL)
    config["train"] = {**config["train"], "precision": "fp8", "compile": True, "epochs": 2}
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert summary(run)["final"]["val/accuracy"] > 0.5


@pytest.mark.e2e  # a run dies by SIGKILL
def test_muon_trains_and_resumes_bit_identically_on_cuda(tmp_path):
    straight, run = straight_and_resumed(tmp_path, optimizer={"name": "muon", "lr": 3e-2})
    a, b = weights(straight), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary(run)["final"]["val/accuracy"] > 0.5


# --- exact resume, deterministic mode ------------------------------------------------------------


@pytest.mark.e2e  # a run dies by SIGKILL
def test_resume_after_sigkill_on_cuda_is_bit_identical(tmp_path):
    # Dropout draws from the CUDA generator here: the checkpoint must carry its state.
    result, straight = train(tmp_path, exact_resume_config("straight"))
    assert result.returncode == 0, result.stderr
    killed, run = train(tmp_path, exact_resume_config("resumed", kill_at=24))
    assert killed.returncode == -signal.SIGKILL
    # The config differs from the killed one's only in kill_at (the probe's kill switch).
    resumed, _ = train(tmp_path, exact_resume_config("resumed"), "--allow-config-change")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 21" in resumed.stdout and manifest(run)["device"].startswith("cuda")
    a, b = weights(straight), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    volatile = ("time", "train/samples_per_s", "train/data_wait_fraction")
    lines = lambda r: [{k: v for k, v in x.items() if k not in volatile} for x in read_jsonl(r / "metrics.jsonl")]
    assert lines(run) == lines(straight)


def test_deterministic_mode_trains_on_cuda_and_repeats_bit_for_bit(tmp_path):
    # torch raises at the first cuBLAS matmul in deterministic mode unless CUBLAS_WORKSPACE_CONFIG is set.
    runs = []
    for name in ("first", "second"):
        config = tiny_config(name=name, model={"name": PROBE})
        result, run = train(tmp_path, config, "train.deterministic=true", "train.epochs=1")
        assert result.returncode == 0, result.stderr
        runs.append(weights(run))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


# --- one GPU under torchrun: FSDP and DDP wiring -------------------------------------------------


def small_gpt_config(name: str, **sections) -> dict:
    model = {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 64}
    data = {
        "name": "synthetic",
        "task": "tokens",
        "vocab_size": 64,
        "seq_len": 32,
        "num_samples": 512,
        "batch_size": 32,
    }
    config = tiny_config(name=name, model=model, data=data, metrics=[], **sections)
    config["train"] = {**config["train"], "epochs": 2}
    return config


@pytest.mark.e2e  # torchrun
def test_fsdp_on_one_gpu_trains_like_one_plain_process(tmp_path):
    # World size 1: FSDP2 shards the GPT blocks over a mesh of one GPU (nccl) and saves DCP checkpoints;
    # the weights must match a plain process's (same data, same math).
    plain, plain_run = train(tmp_path, small_gpt_config("plain"))
    assert plain.returncode == 0, plain.stderr
    fsdp = torchrun_train(tmp_path, small_gpt_config("fsdp", distributed={"strategy": "fsdp"}))
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    run = tmp_path / "runs" / "fsdp"
    assert manifest(run)["world_size"] == 1
    newest = sorted((run / "checkpoints").iterdir())[-1]
    assert (newest / "model_optimizer" / ".metadata").is_file(), [p.name for p in newest.iterdir()]  # DCP shards
    a, b = weights(plain_run), weights(run)
    assert a.keys() == b.keys()
    for key in a:  # an optimizer that missed FSDP's parameters would leave these at their initial values
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key


@pytest.mark.e2e  # torchrun; a run dies by SIGKILL
def test_fsdp_resume_after_sigkill_is_bit_identical(tmp_path):
    def config(name: str, **model) -> dict:
        c = exact_resume_config(name, **model)  # the probe MLP: FSDP wraps its blocks
        c["distributed"] = {"strategy": "fsdp"}
        return c

    straight = torchrun_train(tmp_path, config("straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert torchrun_train(tmp_path, config("resumed", kill_at=24)).returncode != 0  # SIGKILL at forward 24
    resumed = torchrun_train(tmp_path, config("resumed"), "--allow-config-change")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step 21" in resumed.stdout
    a, b = weights(tmp_path / "runs" / "straight"), weights(tmp_path / "runs" / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.e2e  # torchrun
def test_ddp_strategy_on_one_gpu_under_torchrun_trains_like_one_plain_process(tmp_path):
    # One process under torchrun forms a NCCL group of one on cuda:0. Accelerate wraps a model in
    # DistributedDataParallel only for two or more processes, so this proves the launch and group
    # wiring on a GPU; gradient all-reduce itself needs a machine with two GPUs.
    seen = tmp_path / "inputs.json"
    model = {"name": PROBE, "inputs_file": str(seen)}
    plain, plain_run = train(tmp_path, tiny_config(name="plain", model=model))
    assert plain.returncode == 0, plain.stderr
    ddp = torchrun_train(tmp_path, tiny_config(name="ddp", model=model, distributed={"strategy": "ddp"}))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    recorded = json.loads(seen.read_text())
    assert recorded["device"].startswith("cuda") and recorded["dtype"] == "torch.float32"
    assert recorded["process_group"]["world_size"] == 1 and "nccl" in recorded["process_group"]["backend"]
    a, b = weights(plain_run), weights(tmp_path / "runs" / "ddp")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# --- profile on CUDA ------------------------------------------------------------------------------


def test_profile_on_cuda_reports_allocator_peak_and_writes_a_kernel_trace(tmp_path):
    path = write_config(tmp_path, tiny_config(name="prof"))
    result = run_cli("profile", path, "--steps", "5", "--warmup", "2", "--trace", "--estimate", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    f = json.loads(result.stdout.strip().splitlines()[-1])
    assert f["device"].startswith("cuda") and f["peak_source"].startswith("CUDA allocator")
    assert f["memory_bytes"]["measured_peak"] >= f["memory_bytes"]["parameters"] > 0
    assert 0 < f["mfu"] < 1 and f["estimate_bytes"]["total"] > 0
    name = torch.cuda.get_device_name(0)
    if "H100" in name or "H200" in name:  # the data sheet's dense peak of the run's precision (tiny_config: fp32)
        assert f["peak_flops"] == {"fp32": 67e12, "bf16": 989e12}[f["precision"]]
        assert "data sheet" in f["peak_flops_source"]
    traces = list((tmp_path / "runs" / "prof" / "profile" / "trace").glob("*.json"))
    assert traces
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any(e.get("cat") == "kernel" for e in events), "the trace holds no CUDA kernel"
