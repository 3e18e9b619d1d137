"""Registries: names, did-you-mean, signature-derived settings, user code by module path."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from mlrun.errors import UsageError
from mlrun.registry import REGISTRIES, Registry, losses, models, optimizers


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UsageError, match="Did you mean 'adamw'"):
        optimizers.get("adamww")


def test_settings_come_from_the_signature():
    names = [s.name for s in optimizers.settings("sgd")]
    assert names == ["lr", "momentum", "nesterov", "weight_decay"]
    with pytest.raises(ValidationError):
        optimizers.validate("sgd", {"lr": "fast"})


def test_user_code_by_module_path():
    factory = models.get("tests.fixtures:probe_mlp")
    assert factory.__name__ == "probe_mlp"
    assert [s.name for s in models.settings("tests.fixtures:probe_mlp")][:3] == ["kill_at", "nan_at", "dtype_file"]
    with pytest.raises(UsageError, match="has no 'nope'"):
        models.get("tests.fixtures:nope")
    with pytest.raises(UsageError, match="cannot import"):
        models.get("not_a_module_xyz:thing")


def test_user_code_that_fails_to_import_or_is_named_as_a_file_exits_2(tmp_path, monkeypatch):
    """A syntax error or an error raised at import was an "unexpected error" (exit 1); `./mods:f` a TypeError."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_syntax_mod.py").write_text("def make(:\n    pass\n")
    (tmp_path / "raising_mod.py").write_text("raise RuntimeError('no GPU here')\n")
    for path, says in (
        ("broken_syntax_mod:make", "broken_syntax_mod.py:1: syntax error"),
        ("raising_mod:make", "raised RuntimeError: no GPU here"),
        ("./mods:make", "write 'mods:make'"),
        ("pkg/mods.py:make", "write 'pkg.mods:make'"),
    ):
        with pytest.raises(UsageError, match=re.escape(says)):
            models.get(path)
    with pytest.raises(UsageError, match="unknown loss 'mse2'"):  # was "losse"
        losses.get("mse2")


def test_register_a_new_component_in_one_function():
    registry = Registry("widgets", "mlrun")

    @registry.register("double")
    def double(x, /, *, factor: int = 2):
        """Multiply."""
        return x * factor

    assert registry.build("double", 3, factor=5) == 15
    with pytest.raises(ValueError, match="twice"):
        registry.register("double")(double)


def test_every_kind_has_entries():
    assert all(registry.names() for registry in REGISTRIES.values())


def test_an_argument_help_keeps_its_continuation_lines_even_one_reading_like_an_argument():
    """distill's `hidden` help goes on with "init: teacher_layers pairs ...": that line is hidden's, not init's."""
    from mlrun.registry import _arg_help

    doc = """Summary.

    Args:
        init: the student's start: random, or teacher_layers (the
            teacher's tensors).
        hidden: weight of the loss between the blocks
            init: teacher_layers pairs them with (0: off).
        projection: learned maps.

    Returns:
        nothing: a line after the block.
    """
    assert _arg_help(doc) == {
        "init": "the student's start: random, or teacher_layers (the teacher's tensors).",
        "hidden": "weight of the loss between the blocks init: teacher_layers pairs them with (0: off).",
        "projection": "learned maps.",
    }
