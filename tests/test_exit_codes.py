"""Exit codes and output that scripts can rely on (README's exit-code table), through the real CLI."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, tiny_config, write_config


@pytest.mark.parametrize(
    "args, says",
    [
        (["train"], "Missing argument 'config'"),
        (["trian", "c.yaml"], "Did you mean 'train'?"),
        (["train", "c.yaml", "--epochs", "3"], "No such option: --epochs"),
    ],
)
def test_command_line_usage_errors_exit_2_with_a_suggestion(tmp_path, args, says):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "--help" in result.stderr
    assert "unexpected error" not in result.stderr


def test_debug_is_accepted_after_the_command_and_shows_the_traceback(tmp_path):
    result = run_cli("train", "missing.yaml", "--debug", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "missing.yaml" in result.stderr


def test_unwritable_output_dir_exits_2_naming_the_path(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    path = write_config(tmp_path, tiny_config(name="w", output_dir="blocker/runs"))
    result = run_cli("train", path, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "blocker/runs/w" in result.stderr and "output_dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_failure_is_one_json_document_on_stdout(tmp_path):
    result = run_cli("train", "missing.yaml", "--json", cwd=tmp_path)
    assert result.returncode == 2
    document = json.loads(result.stdout)  # the whole of stdout: exactly one document
    assert document["exit_code"] == 2 and "missing.yaml" in document["message"]


def test_train_json_prints_only_the_summary_on_stdout(tmp_path):
    config = tiny_config(name="j")
    config["train"] = {**config["train"], "epochs": 1}
    result = run_cli("train", write_config(tmp_path, config), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["steps"] == 16
    assert "mlrun: training j" in result.stderr  # progress went to stderr
