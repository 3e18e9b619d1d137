"""Every bad input ends with exit code 2 and one message naming the file, line, key and a suggestion."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, run_cli, tiny_config, write_config

QUICKSTART = REPO / "configs" / "quickstart.yaml"


def assert_usage_error(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"


def test_missing_config_file_is_named(tmp_path):
    assert_usage_error(run_cli("validate", "nope.yaml", cwd=tmp_path), "nope.yaml", "not found")


def test_invalid_yaml_names_the_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nmodel: {name: mlp\ndata: digits\n")
    assert_usage_error(run_cli("validate", "bad.yaml", cwd=tmp_path), "bad.yaml:", "invalid YAML")


def test_unknown_top_level_key_suggests_train(tmp_path):
    text = QUICKSTART.read_text().replace("\ntrain:", "\ntrian:")
    (tmp_path / "c.yaml").write_text(text)
    line = text.splitlines().index("trian:") + 1
    result = run_cli("validate", "c.yaml", cwd=tmp_path)
    assert_usage_error(result, f"c.yaml:{line}: trian: unknown key", "Did you mean 'train'?")
    assert result.stderr.index("trian") < result.stderr.index("required key is missing")


def test_a_null_section_says_what_it_takes_and_how_to_train_without_a_schedule(tmp_path):
    """`scheduler=null` answered "a valid dictionary or instance of SchedulerSpec" (a user trial)."""
    result = run_cli("validate", QUICKSTART, "scheduler=null", cwd=tmp_path)
    assert_usage_error(result, "scheduler: takes a scheduler name or {name: ...", "not null", "{name: constant}")
    assert "SchedulerSpec" not in result.stderr and "instance of" not in result.stderr
    result = run_cli("validate", QUICKSTART, "train=null", cwd=tmp_path)
    assert_usage_error(result, "train: takes a mapping of its settings")
    assert "TrainConfig" not in result.stderr


def test_unknown_optimizer_suggests_adamw(tmp_path):
    config = write_config(tmp_path, tiny_config(optimizer={"name": "adamww", "lr": 0.01}))
    assert_usage_error(
        run_cli("validate", config, cwd=tmp_path),
        "config.yaml:",
        "optimizer.name",
        "unknown optimizer 'adamww'",
        "Did you mean 'adamw'?",
    )


def test_misspelt_optimizer_setting_suggests_lr_with_line(tmp_path):
    config = write_config(tmp_path, tiny_config(optimizer={"name": "adamw", "lrr": 0.01}))
    line = config.read_text().splitlines().index("  lrr: 0.01") + 1
    assert_usage_error(
        run_cli("validate", config, cwd=tmp_path),
        f"config.yaml:{line}: optimizer.lrr",
        "unknown setting of optimizer 'adamw'",
        "Did you mean 'lr'?",
    )


def test_wrong_type_names_the_value(tmp_path):
    text = QUICKSTART.read_text().replace("epochs: 15", "epochs: ten")
    (tmp_path / "c.yaml").write_text(text)
    line = [i for i, s in enumerate(text.splitlines(), 1) if "epochs: ten" in s][0]
    assert_usage_error(run_cli("validate", "c.yaml", cwd=tmp_path), f"c.yaml:{line}: train.epochs", "'ten'")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.batch_size=0", "data.batch_size: Input should be greater than 0"),
        ("optimizer.lr=-0.1", "optimizer.lr: Input should be greater than 0"),
        ("data.val_fraction=1.5", "data.val_fraction: Input should be less than 1"),
        ("seed=-1", "seed: Input should be greater than or equal to 0"),  # numpy's traceback, exit 1
        ("techniques=[{name: ema, decay: 0.9}, {name: ema}]", "ema listed more than once"),  # two EMAs, one used
        ("seed=99999999999", "seed: Input should be less than 4294967296"),
        ("train.precision=bf61", "train.precision: Input should be 'fp32'"),  # a misspelt choice: the closest
        ("train.precision=bf61", "(got 'bf61'). Did you mean 'bf16'?"),
    ],
)
def test_out_of_range_values(tmp_path, override, needle):
    assert_usage_error(run_cli("validate", QUICKSTART, override, cwd=tmp_path), f"override '{override}'", needle)


def test_base_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    assert_usage_error(run_cli("validate", "a.yaml", cwd=tmp_path), "b.yaml:1: base: cycle")


def test_folders_empty_files_and_numbers_for_names_get_their_own_message(tmp_path):
    """Found by a user trial: "not found. It is a directory.", a bare list of missing keys for an empty
    file, "base: '..' not found", and name=123 without a word on quoting."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: x\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "up.yaml").write_text("base: run\nname: a\n")
    for args, says in (
        (["run"], "'run' is a folder; give the YAML file itself (a run's is its config.yaml)"),
        (["empty.yaml"], "empty.yaml: the file is empty"),
        (["up.yaml"], "base: 'run' is a folder"),
        ([str(QUICKSTART), "name=123"], "YAML reads it as a number: quote it ('123')"),
    ):
        assert_usage_error(run_cli("validate", *args, cwd=tmp_path), says)


def test_base_given_as_an_override_is_refused(tmp_path):
    """`base=other.yaml` was silently ignored (a user trial)."""
    (tmp_path / "a.yaml").write_text(f"base: {QUICKSTART}\nname: a\n")
    assert_usage_error(run_cli("validate", "a.yaml", "base=other.yaml", cwd=tmp_path), "base is read from the file")


def test_missing_base_file_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: gone.yaml\nname: a\n")
    assert_usage_error(run_cli("validate", "a.yaml", cwd=tmp_path), "a.yaml:1: base: 'gone.yaml' not found")


def test_override_of_missing_key_suggests_the_real_one(tmp_path):
    assert_usage_error(
        run_cli("validate", QUICKSTART, "train.epochz=3", cwd=tmp_path),
        "override 'train.epochz=3'",
        "unknown key",
        "Did you mean 'epochs'?",
    )


def test_a_section_check_failing_on_an_overridden_key_names_the_override_beside_the_file(tmp_path):
    """The pruner's own check runs on the whole section: the file's line alone would hide the culprit."""
    tune = REPO / "configs" / "tune_digits.yaml"
    line = next(n for n, text in enumerate(tune.read_text().splitlines(), 1) if text.strip().startswith("pruner:"))
    result = run_cli("validate", tune, "tune.pruner.reduction_factor=4", "data.batch_size=32", cwd=REPO)
    assert_usage_error(result, f"tune_digits.yaml:{line} with override 'tune.pruner.reduction_factor=4': tune.pruner:")
    assert "batch_size" not in result.stderr  # an override outside the section is not blamed


def test_an_index_past_a_list_says_how_many_entries_it_holds(tmp_path):
    pareto = REPO / "configs" / "pareto_wide_mlp.yaml"
    assert_usage_error(
        run_cli("validate", pareto, "compress.5.alpha=0.5", cwd=REPO),
        "override 'compress.5.alpha=0.5': 'compress' holds 2 entries (0..1)",
        "set the whole list to add one: compress=[...]",
    )


def test_an_index_of_a_list_that_is_not_there_or_negative_says_so(tmp_path):
    """`data.augment.0=hflip` (no augment list) read "Input should be a valid list"; `.-1` "past the end"."""
    assert_usage_error(
        run_cli("validate", QUICKSTART, "data.augment.0=hflip", cwd=tmp_path), "set the whole list: data.augment=[...]"
    )
    assert_usage_error(
        run_cli("validate", QUICKSTART, "model.hidden_sizes.-1=3", cwd=tmp_path), "'-1' is not a list index"
    )


def test_malformed_override(tmp_path):
    assert_usage_error(
        run_cli("validate", QUICKSTART, "train.epochs", cwd=tmp_path), "override 'train.epochs'", "expected key=value"
    )


def test_fp16_on_cpu_is_refused_not_ignored(tmp_path, cpu_only):
    config = write_config(tmp_path, tiny_config())
    assert_usage_error(run_cli("train", config, "train.precision=fp16", cwd=tmp_path), "fp16 needs a GPU")
    # validate passed it, then train refused at once (a user trial)
    assert_usage_error(run_cli("validate", config, "train.precision=fp16", cwd=tmp_path), "fp16 needs a GPU")


def test_muon_under_fsdp_is_refused(tmp_path):
    """Muon on FSDP's shards updated differently from one process and DDP, with no word (a user trial)."""
    refused = run_cli("validate", QUICKSTART, "distributed.strategy=fsdp", "optimizer={name: muon}", cwd=tmp_path)
    assert_usage_error(refused, "optimizer 'muon' updates each weight matrix as a whole")


def test_monitor_of_an_unlogged_metric_is_refused(tmp_path):
    config = write_config(tmp_path, tiny_config())
    assert_usage_error(
        run_cli("validate", config, "train.best={monitor: val/f1, mode: max}", cwd=tmp_path),
        "train.best.monitor",
        "'val/f1' is not logged",
    )


@pytest.mark.parametrize("tracker, package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_hosted_tracker_without_its_package_says_what_to_install(tmp_path, tracker, package):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    config = write_config(tmp_path, tiny_config())
    assert_usage_error(
        run_cli("validate", config, f"tracking=[{tracker}]", cwd=tmp_path),
        f"tracker '{tracker}' needs the {package} package",
        f"pip install 'mlrun[{package}]'",
    )


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_hosted_tracker_whose_package_is_missing_names_its_extra(monkeypatch, tracker):
    """The same message where the package is installed: its absence is simulated in-process."""
    import importlib.util

    from mlrun.errors import UsageError
    from mlrun.registry import trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a))
    with pytest.raises(
        UsageError, match=rf"tracker '{tracker}' needs the {tracker} package: pip install 'mlrun\[{tracker}\]'"
    ):
        trackers.build(tracker)


def test_one_entry_of_the_search_space_is_set_by_its_dotted_key(tmp_path):
    """tune.space's keys are dotted paths themselves: `tune.space.optimizer.lr` names one entry, and a
    key after it one of the entry's settings."""
    from mlrun.config.load import load_config

    tune = REPO / "configs" / "tune_digits.yaml"
    space = load_config(tune, ["tune.space.optimizer.lr={type: float, low: 0.001, high: 0.01}"]).tune.space
    assert (space["optimizer.lr"].low, space["optimizer.lr"].high, space["optimizer.lr"].log) == (0.001, 0.01, False)
    assert "optimizer" not in space and "model.hidden_sizes" in space  # the other entries stay
    space = load_config(
        tune, ["tune.space.optimizer.lr.high=0.02", "tune.space.optimizer.weight_decay.high=0.4"]
    ).tune.space
    assert (space["optimizer.lr"].high, space["optimizer.lr"].log, space["optimizer.weight_decay"].high) == (
        0.02,
        True,
        0.4,
    )
    added = load_config(tune, ["tune.space.train.epochs={type: int, low: 2, high: 4}"]).tune.space
    assert added["train.epochs"].high == 4
    assert_usage_error(
        run_cli("validate", tune, "tune.space.optimizer.lr.hgh=0.02", cwd=REPO),
        "tune.space.optimizer.lr.hgh: unknown key. Did you mean 'high'? Allowed here: type, low, high",
    )
    assert_usage_error(  # a setting of an entry the space does not have
        run_cli("validate", tune, "tune.space.optimizer.momentum.high=0.3", cwd=REPO),
        "tune.space has no entry 'optimizer.momentum' (it has: optimizer.lr,",
        "add it whole, e.g. tune.space.optimizer.momentum={type: float",
    )
