"""Advice for a mistaken command line (the cli's usage errors ask here, so cli.py imports no config code),
and writing a file the command line named."""

from __future__ import annotations


def override_for_option(option: str, value: str | None) -> str:
    """How to write `--epochs 3` as an override (`train.epochs=3`), from the config's own fields."""
    from mlrun.config.load import override_for_option as advice

    return advice(option, value)


def write_named_file(path, text: str, what: str) -> None:
    """Write `text` to a path the user gave (`what`: how the command calls it): missing folders are
    created; a path that cannot be written exits 2 naming it."""
    from mlrun.errors import UsageError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise UsageError(f"{what}: cannot write '{path}' ({exc.strerror or exc}); give a writable path") from None
