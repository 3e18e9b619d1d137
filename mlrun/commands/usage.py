"""Advice for a mistaken command line: the cli's usage errors ask here, so cli.py imports no config code."""

from __future__ import annotations


def override_for_option(option: str, value: str | None) -> str:
    """How to write `--epochs 3` as an override (`train.epochs=3`), from the config's own fields."""
    from mlrun.config.load import override_for_option as advice

    return advice(option, value)
