"""Exit codes and output that scripts can rely on (README's exit-code table), through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli, tiny_config, write_config


@pytest.mark.parametrize(
    "args, says",
    [
        (["train"], "Missing argument 'config'.\n"),
        (["trian", "c.yaml"], "mlrun: error: No such command 'trian'. Did you mean 'train'?"),  # one line, as ours
        (["train", "c.yaml", "--epochs", "3"], "No such option: --epochs: config keys are set as KEY=VALUE"),
        (
            ["validate", "c.yaml", "--trials", "3"],
            "other commands take it, mlrun validate does not; mlrun validate --help",
        ),
        (["--trials", "3"], "No such option: --trials"),
    ],
)
def test_command_line_usage_errors_exit_2_with_a_suggestion(tmp_path, args, says):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "unexpected error" not in result.stderr
    assert result.stderr.lower().count("error:") == 1, result.stderr  # one message, not click's and ours


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
    # On CPU summary.json's peak is the process's resident memory, and says so (profile counts tensors).
    assert summary["peak_memory_measure"].startswith("cpu_max_resident_set") and summary["peak_memory_bytes"] > 0
    assert "mlrun: training j" in result.stderr  # progress went to stderr


def test_a_failure_before_any_checkpoint_says_so_plainly(tmp_path):
    config = tiny_config(name="nan", model={"name": "tests.fixtures:probe_mlp", "nan_at": [2]})
    config["train"] = {**config["train"], "log_every": "1st"}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 1
    assert "No checkpoint was written; the same command starts the run again." in result.stderr
    assert "checkpoint is none" not in result.stderr
    summary = json.loads((tmp_path / "runs" / "nan" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["last_checkpoint"] is None


def enospc() -> OSError:
    import errno

    return OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def summary_unwritable(monkeypatch):
    """summary.json's write fails with ENOSPC after creating its temporary file, as on a full disk."""
    from pathlib import Path

    write_text = Path.write_text

    def failing_write_text(path, text, *args, **kwargs):
        if path.name != "summary.tmp":
            return write_text(path, text, *args, **kwargs)
        path.touch()
        raise enospc()

    monkeypatch.setattr(Path, "write_text", failing_write_text)


@pytest.fixture
def full_disk(monkeypatch, summary_unwritable):
    """The disk fills after the first checkpoint: the next asynchronous checkpoint write fails, then summary.json's."""
    from concurrent.futures import Future

    import torch.distributed.checkpoint as dcp

    saves, async_save = [], dcp.async_save

    def failing_async_save(state, **kwargs):
        saves.append(kwargs)
        if len(saves) == 1:
            return async_save(state, **kwargs)
        failed = Future()  # DCP's background write reports its error when waited on
        failed.set_exception(enospc())
        return failed

    monkeypatch.setattr(dcp, "async_save", failing_async_save)


def test_a_failed_async_checkpoint_on_a_full_disk_is_a_crash_report_naming_the_checkpoint(tmp_path, full_disk):
    config = tiny_config(name="full")
    config["train"] = {**config["train"], "checkpoint_async": True}
    result = run_cli("train", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "training crashed at step 48: OSError: [Errno 28] No space left on device." in result.stderr
    assert "The newest checkpoint is runs/full/checkpoints/step-00000016; the same command resumes" in result.stderr
    assert "could not write runs/full/summary.json" in result.stderr
    assert "unexpected error" not in result.stderr
    run = tmp_path / "runs" / "full"
    assert not (run / "summary.tmp").exists()  # no 0-byte file left beside the records


def test_a_finished_run_whose_summary_cannot_be_written_fails_and_says_how_to_go_on(tmp_path, summary_unwritable):
    result = run_cli("train", write_config(tmp_path, tiny_config(name="end")), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "training ended but summary.json could not be written." in result.stderr
    assert "The newest checkpoint is runs/end/checkpoints/step-00000048; the same command resumes" in result.stderr
    assert not (tmp_path / "runs" / "end" / "summary.tmp").exists()


def gpt_config(name: str) -> dict:
    config = tiny_config(name=name, model={"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0})
    config["data"] = {"name": "text_lm", "path": str(REPO / "configs" / "data" / "public_domain.txt"), "block_size": 16}
    config["metrics"] = []
    config["train"] = {"max_steps": 2, "log_every": "1st", "eval_every": "2st", "checkpoint_every": "1st"}
    return config


def test_third_party_notices_are_hidden_unless_debug(tmp_path):
    # Tied embeddings: Accelerate notes the shared tensor it drops from each checkpoint.
    quiet = run_cli("train", write_config(tmp_path, gpt_config("lm")), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "shared tensor" not in quiet.stderr
    loud = run_cli("train", write_config(tmp_path, gpt_config("lm2")), "--debug", cwd=tmp_path)
    assert loud.returncode == 0 and "shared tensor" in loud.stderr
    # ONNX export with int8: torch.onnx's torchvision registration, onnxruntime's pre-processing hint.
    pytest.importorskip("onnxruntime")
    config = tiny_config(name="onnx")
    config["train"] = {**config["train"], "epochs": 1}
    assert run_cli("train", write_config(tmp_path, config), cwd=tmp_path).returncode == 0
    exported = run_cli("export", "runs/onnx", "--format", "onnx", "--quantize", "int8", "--no-verify", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "torchvision" not in exported.stderr and "pre-processing" not in exported.stderr


@pytest.mark.e2e  # a process of its own, signalled
@pytest.mark.parametrize(
    ("signal_name", "code", "says"),
    [
        ("SIGTERM", 143, "mlrun: interrupted: stopped by SIGTERM outside a training loop"),
        ("SIGINT", 130, "mlrun: interrupted: stopped by Ctrl-C outside a training loop"),  # README's form
    ],
)
def test_a_signal_outside_a_training_loop_is_one_message_and_its_exit_code(tmp_path, signal_name, code, says):
    """validate's one batch runs a forward that sleeps: SIGTERM there ends the command with a message
    (it died silently). Ctrl-C there exited 0 without a word: typer returned its 130 instead of raising it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    started = tmp_path / "forward-started"
    model = {"name": "tests.fixtures:slow_mlp", "sleep_s": 30.0, "started": str(started)}
    path = write_config(tmp_path, tiny_config(name="slow", model=model))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlrun", "validate", str(path)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        # As a shell starts it: Ctrl-C at its default, whatever this test worker's disposition is.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not started.exists():  # in validate's one forward: outside a loop
        time.sleep(0.05)
    # Signalled there, not at a guessed moment during imports: CPython drops a KeyboardInterrupt raised
    # inside an import lock's callback ("Exception ignored in _get_module_lock"), which made this flaky.
    process.send_signal(getattr(signal, signal_name))
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    assert says in stderr and "Traceback" not in stderr


@pytest.mark.e2e  # a process of its own, signalled
def test_ctrl_c_while_a_finished_command_exits_keeps_its_exit_0_and_prints_no_traceback(tmp_path):
    """A Ctrl-C in the exit handlers after a completed run gave exit 130 without a word, or a traceback
    ('Exception ignored in atexit callback')."""
    import os
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "exiting"
    config = tiny_config(name="done", techniques=[{"name": "tests.fixtures:slow_exit", "marker": str(marker)}])
    config["train"] = {**config["train"], "epochs": 1}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlrun", "train", str(write_config(tmp_path, config))],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert marker.exists() and process.returncode == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


@pytest.mark.e2e  # the lock's holder is a process of its own, killed
def test_a_second_trainer_of_a_live_run_exits_2_and_a_killed_holder_leaves_no_lock(tmp_path):
    """Two trainers of one run folder (a job submitted twice) resumed from the same checkpoint and
    interleaved their steps in metrics.jsonl, with no error."""
    path = write_config(tmp_path, tiny_config(name="live"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_RUN, str(tmp_path / "runs" / "live")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        second = run_cli("train", path, cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        assert f"is being trained by another mlrun (pid {holder.pid} on" in second.stderr
        assert not (tmp_path / "runs" / "live" / "metrics.jsonl").exists()  # nothing of the run written
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert run_cli("train", path, cwd=tmp_path).returncode == 0  # the kernel dropped the killed holder's lock


HOLD_THE_RUN = """
import sys, time
from pathlib import Path
from mlrun.engine.run_lock import held_run_folder
with held_run_folder(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""
