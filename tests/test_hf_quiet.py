"""A transformers run's stderr holds mlrun's own lines, not third-party notices a user cannot act on."""

from __future__ import annotations

import pytest

from tests.conftest import make_tiny_hf, run_cli, tiny_config, write_config
from tests.test_model_contract import DIGITS_TEXT

NOISE = (
    "Failed to load",  # torchao's CUDA kernels on a CPU machine, imported by transformers' quantizers and peft
    "_pytree",  # torch.compile deprecations torchao triggers when imported
    "Loading weights",  # transformers' progress bar over a few milliseconds of loading
    "Traceback",
)


@pytest.mark.e2e  # a fresh process: in the test process torchao may already have been imported quietly
def test_a_lora_bert_run_trains_and_evaluates_without_third_party_notices(tmp_path):
    pytest.importorskip("peft")
    folder = make_tiny_hf(tmp_path / "tiny-bert", "bert", DIGITS_TEXT)
    config = tiny_config(
        name="bert_lora",
        model={"name": "transformers", "path": str(folder), "task": "sequence_classification"},
        data={"name": "jsonl_text", "path": DIGITS_TEXT, "tokenizer": str(folder), "max_length": 80, "batch_size": 16},
        optimizer={"name": "adamw", "lr": 2e-3},
        scheduler={"name": "constant"},
        train={"max_steps": 3, "log_every": "1st", "eval_every": "3st", "checkpoint_every": None},
        techniques=[{"name": "lora", "r": 4, "target_modules": ["query", "value"], "trainable": ["classifier.*"]}],
    )
    trained = run_cli("train", write_config(tmp_path, config), cwd=tmp_path, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = run_cli("eval", tmp_path / "runs" / "bert_lora", cwd=tmp_path, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "mlrun: lora:" in trained.stderr  # mlrun's own lines still show
    for result in (trained, evaluated):
        assert not [noise for noise in NOISE if noise in result.stderr], result.stderr[-3000:]
