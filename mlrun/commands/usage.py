"""Advice for a mistaken command line: the cli's usage errors ask here, so cli.py imports no config code."""

from __future__ import annotations


def override_for_option(option: str, value: str | None) -> str:
    """How to write `--epochs 3` as an override (`train.epochs=3`), from the config's own fields."""
    from mlrun.config.load import override_for_option as advice

    return advice(option, value)


def train_command(path, overrides: list[str]) -> str:
    """The `mlrun train` line that trains the run a command was pointed at: its config and overrides (the
    overrides choose the run's name and folder too), quoted for a shell."""
    import shlex

    return shlex.join(["mlrun", "train", str(path), *overrides])
