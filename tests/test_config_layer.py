"""The config layer in-process: base chains, overrides, durations, resolved configs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mlrun.config.load import load_config
from mlrun.config.schema import Duration, parse_duration
from mlrun.errors import UsageError
from tests.conftest import tiny_config, write_config


def test_base_chain_merges_deeply_and_lists_replace(tmp_path):
    write_config(tmp_path, tiny_config(metrics=["accuracy", "f1"]), "base.yaml")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\noptimizer: {lr: 0.5}\nmetrics: [f1]\n")
    config = load_config(tmp_path / "child.yaml")
    assert config.name == "child"
    assert config.optimizer.name == "adamw" and config.optimizer.settings["lr"] == 0.5
    assert [m.name for m in config.metrics] == ["f1"]
    assert config.base is None  # resolved configs are self-contained


def test_a_base_component_of_another_factory_keeps_only_the_keys_the_new_one_reads(tmp_path, capsys):
    """`model: {name: cnn}` over a base's mlp kept hidden_sizes, which cnn refused (a user trial); replacing the
    whole section then dropped the section's own keys (batch_size) and settings both take (a review)."""
    base = tiny_config(data={**tiny_config()["data"], "name": "digits", "val_fraction": 0.3, "num_samples": None})
    del base["data"]["num_samples"], base["data"]["num_features"], base["data"]["num_classes"]
    write_config(tmp_path, base, "base.yaml")  # model: {name: mlp, hidden_sizes: [32], dropout: 0.0}
    (tmp_path / "child.yaml").write_text(
        "base: base.yaml\nmodel: {name: cnn, channels: [8]}\ndata: {name: breast_cancer}\n"
        "optimizer: {lr: 0.5}\ntune: {metric: val/loss, sampler: {name: random}, space: {}}\n"
    )
    config = load_config(tmp_path / "child.yaml")
    assert config.model.name == "cnn" and config.model.settings == {"channels": [8], "dropout": 0.0}
    assert "the base's hidden_sizes (settings of 'mlp') do not apply to 'cnn'" in capsys.readouterr().err
    assert config.data.name == "breast_cancer" and config.data.batch_size == 32
    assert config.data.settings == {"val_fraction": 0.3}  # a setting both datasets take
    assert config.optimizer.name == "adamw"  # the same factory (no name given) still merges


def test_best_and_early_stopping_take_their_mode_from_the_figures_name(tmp_path):
    """mode defaulted to min, so {monitor: val/accuracy} kept the worst weights and stopped a rising run
    (a user trial); a name that says neither must set it."""
    path = write_config(tmp_path, tiny_config())
    config = load_config(path, ["train.best={monitor: val/accuracy}", "train.early_stopping={monitor: train/loss}"])
    assert config.train.best.mode == "max" and config.train.early_stopping.mode == "min"
    assert load_config(path, ["train.best={monitor: val/accuracy, mode: min}"]).train.best.mode == "min"
    with pytest.raises(UsageError, match="'val/custom' does not say whether smaller or larger is better; set mode"):
        load_config(path, ["train.best={monitor: val/custom}"])


def test_overrides_are_yaml_typed_and_mapping_replaces_section(tmp_path):
    path = write_config(tmp_path, tiny_config())
    config = load_config(path, ["train.epochs=7", "model.hidden_sizes=[8, 8]", "optimizer={name: sgd, lr: 0.1}"])
    assert config.train.epochs == 7
    assert config.model.settings["hidden_sizes"] == [8, 8]
    assert config.optimizer.name == "sgd" and config.optimizer.settings == {"lr": 0.1}


def test_override_of_a_bare_component_name_adds_settings(tmp_path):
    path = write_config(tmp_path, tiny_config(loss="cross_entropy"))
    config = load_config(path, ["loss.label_smoothing=0.1"])
    assert config.loss.name == "cross_entropy" and config.loss.settings == {"label_smoothing": 0.1}


def test_resolved_config_round_trips(tmp_path):
    path = write_config(tmp_path, tiny_config())
    config = load_config(path, ["train.eval_every=50"])
    dumped = config.model_dump(mode="json")
    assert dumped["train"]["eval_every"] == "50st"
    again = write_config(tmp_path, dumped, "again.yaml")
    assert load_config(again) == config


@pytest.mark.parametrize(
    "text, expected",
    [("1ep", Duration(1, "ep")), ("200st", Duration(200, "st")), (30, Duration(30, "st")), ("5", Duration(5, "st"))],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["0ep", "1 epoch", "-3", True])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_train_needs_a_length(tmp_path):
    path = write_config(tmp_path, tiny_config(train={"log_every": "5st"}))
    with pytest.raises(UsageError, match="train.epochs or train.max_steps"):
        load_config(path)


def test_config_is_frozen(tmp_path):
    config = load_config(write_config(tmp_path, tiny_config()))
    with pytest.raises(ValidationError, match="frozen"):
        config.train.epochs = 1
