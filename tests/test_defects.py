"""Defects found on day two, each through the real CLI: low-bit optimizers, grid spaces, tune workers, export."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, tiny_config, write_config


@pytest.mark.parametrize("name", ["adamw8bit", "adamw4bit"])
def test_low_bit_optimizers_train_and_log_a_float_lr(tmp_path, name):
    pytest.importorskip("torchao")
    config = tiny_config(name=name, optimizer={"name": name, "lr": 1e-2})
    config["train"] = {**config["train"], "max_steps": 3, "log_every": "1st"}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    lrs = [line["train/lr"] for line in lines if "train/lr" in line]
    assert len(lrs) == 3 and all(isinstance(lr, float) for lr in lrs)
    assert "_pytree" not in result.stderr  # torchao's import notice is hidden


def tune_config(tmp_path, trials: int, **tune) -> dict:
    config = tiny_config(name="study", tracking=["jsonl"])
    config["train"] = {"epochs": 1, "eval_every": "1ep", "checkpoint_every": None}
    config["tune"] = {
        "metric": "val/accuracy",
        "direction": "maximize",
        "trials": trials,
        "pruner": {"name": "none"},
        "space": {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
        **tune,
    }
    return write_config(tmp_path, config)


def test_grid_range_with_step_and_log_is_a_config_error(tmp_path):
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True, "step": 1e-3}}
    result = run_cli("tune", tune_config(tmp_path, 2, sampler={"name": "grid"}, space=space), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "step" in result.stderr and "log" in result.stderr and "choices" in result.stderr
    assert "unexpected error" not in result.stderr


def test_nsga2_population_reaches_optuna_and_a_too_small_study_is_warned(tmp_path):
    from mlrun.config.schema import SamplerConfig
    from mlrun.tuning.study import make_sampler

    assert make_sampler(SamplerConfig(name="nsga2", population_size=4), None)._population_size == 4
    result = run_cli("tune", tune_config(tmp_path, 2, sampler={"name": "nsga2", "seed": 0}), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "population_size" in result.stderr and "random" in result.stderr
    refused = run_cli("tune", tune_config(tmp_path, 2, sampler={"name": "tpe", "population_size": 4}), cwd=tmp_path)
    assert refused.returncode == 2 and "only nsga2" in refused.stderr


def test_export_of_a_plain_tensor_dataset_and_best_beside_final(tmp_path):
    config = tiny_config(name="plain", data={"name": "tests.fixtures:tensor_dataset_data", "batch_size": 32})
    config["train"] = {**config["train"], "epochs": 1, "best": {"monitor": "val/accuracy", "mode": "max"}}
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    run = tmp_path / "runs" / "plain"
    final = run_cli("export", run, "--format", "safetensors", "--json", cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["verification"]["class_agreement"] == 1.0
    best = run_cli("export", run, "--format", "safetensors", "--checkpoint", "best", "--no-verify", cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    exported = {p.name: json.loads((p / "export.json").read_text()) for p in (run / "export").iterdir()}
    assert exported["safetensors-none"]["source_weights"].endswith("model.safetensors")
    assert exported["safetensors-none-best"]["source_weights"].endswith("best.safetensors")


def test_a_quantized_export_slower_than_fp32_is_warned():
    from mlrun.commands.export import slower_than_fp32

    figures = {"speedup_b1": 0.11, "speedup_b64": 1.4}
    warning = slower_than_fp32({"format": "pt2", "quantize": "int8", "verification": figures})
    assert warning and "0.11x at batch 1" in warning and "batch 64" not in warning
    faster = {"speedup_b1": 1.2, "speedup_b64": 1.4}
    assert slower_than_fp32({"format": "pt2", "quantize": "int8", "verification": faster}) is None
    assert slower_than_fp32({"format": "pt2", "quantize": "none", "verification": figures}) is None


def test_profile_advice_is_bounded_by_the_data_and_promises_no_bf16_saving_on_cpu(tmp_path):
    config = tiny_config(name="adv")
    config["data"] = {**config["data"], "batch_size": 8}  # 512 training samples
    result = run_cli("profile", write_config(tmp_path, config), "--steps", "3", "--warmup", "1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    advice = json.loads(result.stdout)["advice"]
    grow = [line for line in advice if "the batch could grow" in line]
    assert grow and "about 64 samples" in grow[0] and "512 training samples" in grow[0]
    assert not any("bf16" in line for line in advice)  # the CPU matrix measures no saving from bf16
