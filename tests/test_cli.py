"""The CLI surface: fast help, list, schema, init, validate, commands still to come."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import jsonschema
import pytest
import yaml

from mlrun.commands.schema import config_schema
from mlrun.config.load import resolve_raw
from tests.conftest import REPO, run_cli

COMMANDS = [
    "train",
    "validate",
    "profile",
    "tune",
    "export",
    "eval",
    "list",
    "schema",
    "init",
    "compare",
    "predict",
    "prepare",
]


@pytest.mark.e2e  # a fresh interpreter's imports: `mlrun --help` stays torch-free
def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from mlrun.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'mlrun --help imported torch'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in COMMANDS)


def test_list_shows_settings_with_defaults(tmp_path):
    result = run_cli("list", "optimizers", cwd=tmp_path)
    assert result.returncode == 0
    assert "adamw" in result.stdout and "lamb" in result.stdout and "lr: float = 0.001" in result.stdout


def test_list_json_has_every_kind(tmp_path):
    entries = json.loads(run_cli("list", "--json", cwd=tmp_path).stdout)
    assert set(entries) == {
        "models",
        "datasets",
        "augmentations",
        "losses",
        "metrics",
        "optimizers",
        "schedulers",
        "techniques",
        "trackers",
        "objectives",
        "stages",
    }
    assert {"mlp", "cnn", "resnet", "transformer_classifier", "gpt", "transformers"} <= set(entries["models"])
    assert {"supervised", "causal_lm", "model_loss"} <= set(entries["objectives"])
    probe = next(s for s in entries["techniques"]["lp_ft"]["settings"] if s["name"] == "probe")
    assert probe["default"] == "1ep"  # as a config writes it (was [1, "ep"])


def test_list_unknown_kind_suggests(tmp_path):
    result = run_cli("list", "optimiser", cwd=tmp_path)
    assert result.returncode == 2 and "Did you mean 'optimizers'?" in result.stderr


def test_shipped_configs_validate_against_the_json_schema():
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    # One validator for all files: jsonschema.validate() checks the (large) schema itself again on every call.
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((REPO / "configs").glob("*.yaml")):
        merged, _ = resolve_raw(path)  # configs with `base:` are complete once merged
        validator.validate(merged)
        # ...and the file itself, as an editor sees it: a `base:` file may leave sections to its base.
        validator.validate(yaml.safe_load(path.read_text()))
    without_model = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    del without_model["model"]
    with pytest.raises(jsonschema.ValidationError, match="'model' is a required property"):
        validator.validate(without_model)


def test_schema_lets_a_base_file_set_one_nested_key_and_still_refuses_typos():
    validator = jsonschema.Draft202012Validator(config_schema())
    derived = {"base": "digits_wide_mlp.yaml", "model": {"hidden_sizes": [32]}, "compress": [{"sparsity": 0.5}]}
    validator.validate(derived)
    for typo in ({"model": {"hidden": [32]}}, {"optimizer": {"lrr": 0.1}}, {"trian": {}}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({"base": "digits_wide_mlp.yaml", **typo})
    nameless = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    del nameless["model"]["name"]  # without a base, a component names its factory
    with pytest.raises(jsonschema.ValidationError, match="not valid under any"):
        validator.validate(nameless)


def test_schema_agrees_with_the_loader_on_durations_paths_and_ranges():
    """Found by a user trial: defaults shown as [1, "ep"] (which configs refuse), a bare init_from path
    refused, batch_size 0, eval_every 0st and seed -1 accepted."""
    schema = config_schema()
    validator = jsonschema.Draft202012Validator(schema)
    text = json.dumps(schema)
    assert '"default": "1ep"' in text and '[1, "ep"]' not in text and '[20, "st"]' not in text
    quick = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    validator.validate({**quick, "init_from": "runs/starter", "train": {**quick["train"], "eval_every": "2 ep"}})
    for bad in (
        {"data": {**quick["data"], "batch_size": 0}},
        {"train": {**quick["train"], "eval_every": "0st"}},
        {"seed": -1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({**quick, **bad})


def test_schema_rejects_a_misspelt_setting():
    bad = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    bad["optimizer"]["lrr"] = 0.1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, config_schema(), cls=jsonschema.Draft202012Validator)


def test_schema_command_prints_draft_2020_12(tmp_path):
    result = run_cli("schema", cwd=tmp_path)
    assert json.loads(result.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # --out replaced any file (a config, a run's config.yaml) with the schema (a user trial); an old schema is fine.
    (tmp_path / "mlrun.yaml").write_text("name: mine\n")
    refused = run_cli("schema", "--out", "mlrun.yaml", cwd=tmp_path)
    assert refused.returncode == 2 and "not a JSON Schema" in refused.stderr
    assert (tmp_path / "mlrun.yaml").read_text() == "name: mine\n"
    for _ in range(2):
        assert run_cli("schema", "--out", "schema.json", cwd=tmp_path).returncode == 0


def test_init_writes_a_config_that_validates_and_refuses_to_overwrite(tmp_path):
    assert run_cli("init", "start.yaml", cwd=tmp_path).returncode == 0
    assert "# " in (tmp_path / "start.yaml").read_text()  # commented
    assert run_cli("validate", "start.yaml", cwd=tmp_path).returncode == 0
    again = run_cli("init", "start.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    for args in (["init", "new"], ["init", "new", "--force"]):  # a folder: --force was advised, then failed
        (tmp_path / "new").mkdir(exist_ok=True)
        folder = run_cli(*args, cwd=tmp_path)
        assert folder.returncode == 2 and "is a folder" in folder.stderr and "--force" not in folder.stderr
    nested = run_cli("init", "new/folder/start.yaml", cwd=tmp_path)  # folders it needs are made
    assert nested.returncode == 0 and (tmp_path / "new/folder/start.yaml").is_file(), nested.stderr
    (tmp_path / "blocker").write_text("a file where a folder should be")
    for args in (["init", "blocker/start.yaml"], ["schema", "--out", "blocker/s.json"]):
        blocked = run_cli(*args, cwd=tmp_path)
        assert blocked.returncode == 2 and "cannot write 'blocker/" in blocked.stderr, blocked.stderr
        assert "Traceback" not in blocked.stderr and "unexpected" not in blocked.stderr


def test_validate_print_shows_the_resolved_config(tmp_path):
    result = run_cli("validate", REPO / "configs" / "quickstart.yaml", "optimizer.lr=0.5", "--print", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)  # stdout is the config alone: the status and groups went there too
    assert resolved["optimizer"]["lr"] == 0.5 and resolved["train"]["eval_every"] == "1ep"
    assert "is valid" in result.stderr and "optimizer groups" in result.stderr
    (tmp_path / "resolved.yaml").write_text(result.stdout)
    assert run_cli("validate", "resolved.yaml", cwd=tmp_path).returncode == 0


def test_version(tmp_path):
    assert run_cli("--version", cwd=tmp_path).stdout.startswith("mlrun ")


def test_a_command_that_finished_well_destroys_its_process_group_and_a_failed_one_leaves_it(tmp_path, monkeypatch):
    # A failed rank must not tear down a group the others may still wait in; a rank that finished well
    # destroys it; both leave before Python's finalization (next test), a failed one with its exit code
    # (gloo's threads could otherwise turn its exit 2 into a SIGABRT).
    # mlrun.cli.main is called directly: the in-process runner resets process groups after each command.
    import torch.distributed as dist

    import mlrun.cli
    import mlrun.notices

    # Outside the runner nothing would remove the notice filters main installs for the rest of this
    # worker's tests (a later --debug run would miss its notices).
    monkeypatch.setattr(mlrun.notices, "hide_third_party_notices", lambda: None)
    exits = []
    monkeypatch.setattr(
        mlrun.cli, "_exit_before_finalization", lambda code=0: exits.append((code, dist.is_initialized()))
    )
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    # main leaves SIGINT ignored after a command that finished (and SIGTERM its own): kept for this worker,
    # every process it later starts inherited an ignored Ctrl-C (a signal test then failed, in CI only).
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        monkeypatch.setattr(sys, "argv", ["mlrun", "validate", str(tmp_path / "missing.yaml")])
        with pytest.raises(SystemExit) as failed:
            mlrun.cli.main()
        assert failed.value.code == 2 and dist.is_initialized() and exits == [(2, True)]
        monkeypatch.setattr(sys, "argv", ["mlrun", "list"])
        mlrun.cli.main()
        assert not dist.is_initialized() and exits[1:] == [(0, False)]  # destroyed first, then the early exit
        monkeypatch.setattr(sys, "argv", ["mlrun", "list"])
        mlrun.cli.main()
        assert exits[1:] == [(0, False)]  # no process group: a plain exit
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_rank_that_finished_well_exits_after_threads_and_atexit_handlers_but_skips_finalization(tmp_path):
    # gloo's threads outlive destroy_process_group (DDP and FSDP2 hold the group) and could abort the
    # rank while Python finalizes; what a normal exit does before finalizing must still happen.
    script = tmp_path / "rank.py"
    script.write_text(
        textwrap.dedent(f"""
        import atexit, pathlib, sys, threading, time
        from mlrun.cli import _exit_before_finalization
        folder = pathlib.Path({str(tmp_path)!r})

        class Finalized:
            def __del__(self):
                (folder / "finalized").touch()

        kept = Finalized()  # a module global: freed only by the interpreter's teardown
        atexit.register(lambda: (folder / "atexit").touch())
        threading.Thread(target=lambda: (time.sleep(0.5), (folder / "thread").touch())).start()
        sys.stdout.write("no newline yet")
        _exit_before_finalization(3)  # a failed rank's code
        """)
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == "no newline yet"
    assert (tmp_path / "thread").exists() and (tmp_path / "atexit").exists()
    assert not (tmp_path / "finalized").exists()


def test_the_json_document_is_strict_json_and_printed_by_the_first_process_only(capsys, monkeypatch):
    """A NaN figure (a diverged stage's loss) is null, not the bare NaN strict parsers refuse; under torchrun
    every rank holds the document and only rank 0 prints it."""
    from mlrun import jsonout

    monkeypatch.delenv("RANK", raising=False)
    jsonout.print_json({"val/loss": float("nan"), "rows": [{"ms": float("inf")}, 1.5]})
    assert json.loads(capsys.readouterr().out) == {"val/loss": None, "rows": [{"ms": None}, 1.5]}
    monkeypatch.setenv("RANK", "1")
    jsonout.print_json({"step": 3})
    assert capsys.readouterr().out == ""
