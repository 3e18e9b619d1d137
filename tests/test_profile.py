"""`mlrun profile` through the real CLI: figures, memory split, checkpointing, estimate, advice, matrix, trace."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, tiny_config, write_config

DEEP = {"name": "mlp", "hidden_sizes": [512] * 6, "dropout": 0.0}
BIG_BATCH = {"name": "synthetic", "num_samples": 2048, "num_features": 64, "batch_size": 512}


def profile(tmp_path, config: dict, *args: str, steps: int = 5) -> dict:
    result = run_cli(
        "profile", write_config(tmp_path, config), "--steps", str(steps), "--warmup", "2", *args, "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # the whole of stdout: --json prints one document


def test_every_figure_is_present_and_sane(tmp_path):
    f = profile(tmp_path, tiny_config())
    assert f["samples_per_s"] > 0 and f["step_ms"] > 0
    assert set(f["breakdown_ms"]) == {"data", "forward", "backward", "optimizer", "other"}
    assert sum(f["breakdown_ms"].values()) == pytest.approx(f["step_ms"], rel=0.05)
    assert f["flops_per_step"] > 0 and 0 < f["mfu"] < 1.5 and f["peak_flops"] > 0
    m = f["memory_bytes"]
    assert m["parameters"] > 0 and m["gradients"] == m["parameters"]
    # AdamW: two fp32 moments per parameter, plus a scalar step count per tensor.
    assert 2 * m["parameters"] <= m["optimizer_state"] <= 2 * m["parameters"] + 1024
    assert m["activations"] > 0 and m["measured_peak"] >= m["parameters"]
    assert (tmp_path / "runs" / "tiny" / "profile" / "profile.json").exists()


def test_checkpointing_lowers_activation_memory_of_a_deep_model(tmp_path):
    # With dropout each block saves its input, its ReLU output and a mask; checkpointed, only the input.
    # (Without dropout a Linear+ReLU block saves one tensor either way: the ReLU output is the next input.)
    config = tiny_config(model={**DEEP, "dropout": 0.1}, data=BIG_BATCH)
    plain = profile(tmp_path, config)["memory_bytes"]["activations"]
    checkpointed = profile(tmp_path, {**config, "techniques": ["activation_checkpointing"]})["memory_bytes"]
    assert checkpointed["activations"] < 0.7 * plain  # only each block's input is kept


@pytest.mark.parametrize("techniques", [[], ["ema"]], ids=["plain", "ema"])
def test_estimate_lands_near_the_measured_peak(tmp_path, cpu_only, techniques):
    # The tolerance (15%) against live tensor bytes, which do not depend on the allocator's history.
    # EMA keeps an fp32 copy of the weights for the whole step: its entry declares the bytes.
    f = profile(tmp_path, tiny_config(model=DEEP, data=BIG_BATCH, techniques=techniques), "--estimate")
    assert f["estimate_bytes"]["technique_state"] == (f["memory_bytes"]["parameters"] if techniques else 0)
    assert f["peak_source"].startswith("live tensors")
    error = f["estimate_bytes"]["total"] / f["memory_bytes"]["measured_peak"] - 1
    assert abs(error) <= 0.15, f"estimate off by {100 * error:.0f}%"
    assert f["memory_bytes"]["resident_peak"] > 0


def test_advice_names_a_slow_loader_and_stays_silent_for_a_fast_one(tmp_path):
    # A slow loader by a margin that holds while another test process shares the cores (pytest-xdist).
    slow = profile(tmp_path, tiny_config(data={"name": "tests.fixtures:slow_data", "sleep_s": 0.1, "batch_size": 32}))
    assert slow["data_wait_fraction"] > 0.3
    assert any("data loader is the bottleneck" in line for line in slow["advice"])
    fast = profile(tmp_path, tiny_config())
    assert not any("data loader" in line for line in fast["advice"])


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_loader_advice_never_suggests_the_workers_already_set(tmp_path, monkeypatch, workers):
    """`data.num_workers=2` on 2 cores was told `set data.num_workers: 2 (now 2)` (a user trial)."""
    from mlrun.config.load import load_config
    from mlrun.profiling import advice as advice_module

    monkeypatch.setattr(advice_module.os, "cpu_count", lambda: 2)
    config = load_config(write_config(tmp_path, tiny_config()), [f"data.num_workers={workers}"])
    memory = {"parameters": 1, "gradients": 1, "optimizer_state": 0, "activations": 0, "measured_peak": 4}
    figures = {"device": "cpu", "memory_bytes": memory, "data_wait_fraction": 0.4, "mfu": 0.5}
    line = next(a for a in advice_module.advice({**figures, "breakdown_ms": {"data": 5.0}}, config) if "loader" in a)
    if workers < 2:
        assert f"set data.num_workers: 2 (now {workers})" in line
    else:
        assert "set data.num_workers" not in line and f"already {workers}" in line, line


def test_profile_warns_as_validate_does_of_a_batch_larger_than_the_training_split(tmp_path):
    """`profile data.batch_size=4096` on 1437 samples reported "batch 4096" without a word (validate warns)."""
    config = write_config(tmp_path, tiny_config())
    result = run_cli("profile", config, "--steps", "1", "--warmup", "0", "data.batch_size=4096", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "data.batch_size: 4096 is larger than the" in result.stderr, result.stderr


def test_one_profiled_step_is_a_step_not_steps(tmp_path):
    result = run_cli("profile", write_config(tmp_path, tiny_config()), "--steps", "1", "--warmup", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mlrun: profiled 1 step on "), result.stdout


def test_memory_advice_speaks_only_of_savings_worth_a_change(tmp_path, monkeypatch):
    from mlrun.config.load import load_config
    from mlrun.profiling import advice as advice_module
    from mlrun.profiling.advice import advice

    monkeypatch.setattr(advice_module, "_available_bytes", lambda figures: 80 * 2**30)  # an 80 GB GPU, on CPU

    config = load_config(write_config(tmp_path, tiny_config()))
    mb = 2**20

    def lines(parameters: int, optimizer_state: int, activations: int, device: str = "cuda:0") -> str:
        memory = {"parameters": parameters, "gradients": parameters, "optimizer_state": optimizer_state}
        memory |= {"activations": activations, "measured_peak": 2 * parameters + optimizer_state + activations}
        figures = {"device": device, "memory_bytes": memory, "data_wait_fraction": 0.0, "mfu": 0.5}
        return " ".join(advice({**figures, "breakdown_ms": {"data": 0.0}}, config))

    small = lines(parameters=10 * mb, optimizer_state=20 * mb, activations=2 * mb)  # 4% and 34% of 62 MB
    assert "bf16" not in small and "adafactor" in small
    large = lines(parameters=mb, optimizer_state=2 * mb, activations=60 * mb)  # 47% and 3% of 64 MB
    assert "bf16 could save up to 47%" in large and "adafactor" not in large
    # On CPU bf16 autocast keeps activations in fp32 (the matrix measures no saving): no promise there.
    assert "bf16" not in lines(parameters=mb, optimizer_state=2 * mb, activations=60 * mb, device="cpu")


def test_profile_prints_no_native_profiler_notices(tmp_path):
    """torch.profiler's C++ side writes its start/stop trace points and an allocator note to stderr."""
    result = run_cli("profile", write_config(tmp_path, tiny_config()), "--steps", "3", "--warmup", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "profiler_start" not in result.stderr and "Memory block of unknown size" not in result.stderr, result.stderr


def test_trace_is_written(tmp_path):
    f = profile(tmp_path, tiny_config(), "--trace")
    assert list((tmp_path / "runs" / "tiny" / "profile" / "trace").glob("*.json"))
    assert f["trace_dir"].endswith("trace")


@pytest.mark.slow  # eight profile processes, a minute on two cores
def test_matrix_compares_techniques_at_equal_effective_batch(tmp_path):
    # Smaller than DEEP x BIG_BATCH: bf16 runs 20x slower than fp32 on CPUs without bf16 instructions (AMD EPYC
    # without AVX512-BF16), and the matrix runs six of its eight cases in bf16.
    model = {**DEEP, "hidden_sizes": [128] * 4}
    data = {**BIG_BATCH, "num_samples": 256, "batch_size": 64}
    result = run_cli(
        "profile",
        write_config(tmp_path, tiny_config(model=model, data=data)),
        "--matrix",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)  # the whole of stdout: tables went to stderr
    assert [r["case"] for r in rows][:4] == ["fp32", "bf16", "bf16+ckpt", "bf16+ckpt+accum4"]
    assert len(rows) == 8 and rows[0]["memory_saved"] == 0
    assert rows[3]["memory_bytes"]["activations"] < rows[0]["memory_bytes"]["activations"]
    folder = tmp_path / "runs" / "tiny" / "profile"
    assert (folder / "matrix.json").exists() and (folder / "matrix.png").exists()


@pytest.mark.parametrize("name, most", [("adamw8bit", 0.3), ("adamw4bit", 0.2)])
def test_low_bit_adamw_state_is_a_fraction_of_adamw(tmp_path, name, most):
    pytest.importorskip("torchao")
    config = tiny_config(model=DEEP, data=BIG_BATCH)
    full = profile(tmp_path, config)["memory_bytes"]["optimizer_state"]
    small = profile(tmp_path, {**config, "optimizer": {"name": name, "lr": 1e-3}})["memory_bytes"]["optimizer_state"]
    assert small < most * full


def test_optimizer_in_backward_holds_one_gradient_at_a_time(tmp_path):
    config = tiny_config(model=DEEP, data=BIG_BATCH, techniques=["optimizer_in_backward"])
    f = profile(tmp_path, config)
    assert f["memory_bytes"]["gradients"] < 0.5 * f["memory_bytes"]["parameters"]


def test_auto_batch_size_fills_the_budget_and_is_written_as_a_number(tmp_path, cpu_only):
    config = tiny_config(model=DEEP, data={**BIG_BATCH, "batch_size": "auto"})
    config["train"] = {**config["train"], "memory_budget_gb": 0.05, "epochs": 1}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import yaml

    written = yaml.safe_load((tmp_path / "runs" / "tiny" / "config.yaml").read_text())["data"]["batch_size"]
    assert isinstance(written, int) and 8 <= written < 2048
    assert f"data.batch_size: auto -> {written}" in result.stdout
    f = profile(tmp_path, {**config, "data": {**BIG_BATCH, "batch_size": written}}, "--estimate")
    assert f["estimate_bytes"]["total"] <= 0.05 * 2**30  # the batch found fits the budget by the same estimate


def test_auto_batch_size_with_an_impossible_budget_is_exit_2(tmp_path):
    config = tiny_config(model=DEEP, data={**BIG_BATCH, "batch_size": "auto"})
    config["train"] = {**config["train"], "memory_budget_gb": 0.001}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2 and "not even a batch of 1 fits" in result.stderr


def test_profile_advice_is_bounded_by_the_data_and_promises_no_bf16_saving_on_cpu(tmp_path):
    config = tiny_config(name="adv")
    config["data"] = {**config["data"], "batch_size": 8}  # 512 training samples
    result = run_cli("profile", write_config(tmp_path, config), "--steps", "3", "--warmup", "1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    advice = json.loads(result.stdout)["advice"]
    grow = [line for line in advice if "the batch could grow" in line]
    assert grow and "from 8 to about 64 samples" in grow[0] and "512 training samples" in grow[0]
    assert not any("bf16" in line for line in advice)  # the CPU matrix measures no saving from bf16
    # Under accumulation an optimizer step takes two micro-batches: half the micro-batch keeps 8 steps an epoch.
    config["train"] = {**config["train"], "grad_accum_steps": 2}
    result = run_cli("profile", write_config(tmp_path, config), "--steps", "3", "--warmup", "1", "--json", cwd=tmp_path)
    grow = [line for line in json.loads(result.stdout)["advice"] if "the batch could grow" in line]
    assert grow and "from 8 to about 32 samples" in grow[0], grow
