"""The in-process CLI runner (tests/cli_runner.py) answers like `python -m mlrun` and leaves no trace behind."""

from __future__ import annotations

import json
import os
import signal
import sys

import torch

from tests.conftest import run_cli, tiny_config, write_config


def test_in_process_and_subprocess_answer_alike(tmp_path):
    bad = tiny_config(optimizer={"name": "adamw", "lrr": 0.1})
    path = write_config(tmp_path, bad)
    for args in [("list", "optimizers", "--json"), ("validate", path), ("validate", path, "--json"), ("--version",)]:
        inside, real = run_cli(*args, cwd=tmp_path), run_cli(*args, cwd=tmp_path, subprocess=True)
        assert (inside.returncode, inside.stdout, inside.stderr) == (real.returncode, real.stdout, real.stderr), args
    assert json.loads(run_cli("validate", path, "--json", cwd=tmp_path).stdout)["exit_code"] == 2


def test_a_run_leaves_the_test_process_as_it_found_it(tmp_path):
    from accelerate.state import AcceleratorState, PartialState

    before = (
        os.getcwd(),
        dict(os.environ),
        sys.path[:],
        {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)},
        (sys.stdout, sys.stderr),
        (torch.get_default_dtype(), torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()),
        torch.get_rng_state(),
    )
    config = tiny_config(name="trace")
    config["train"] = {**config["train"], "max_steps": 2, "deterministic": True}
    result = run_cli("train", write_config(tmp_path, config), "--debug", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "completed"  # the one document, progress on stderr
    after = (
        os.getcwd(),
        dict(os.environ),
        sys.path[:],
        {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)},
        (sys.stdout, sys.stderr),
        (torch.get_default_dtype(), torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()),
        torch.get_rng_state(),
    )
    assert after[:-1] == before[:-1] and torch.equal(after[-1], before[-1])
    assert not AcceleratorState._shared_state and not PartialState._shared_state
    print("stdout still works")  # fd 1 and sys.stdout are pytest's again
