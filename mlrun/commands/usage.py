"""Advice for a mistaken command line (the cli's usage errors ask here, so cli.py imports no config code),
and writing a file the command line named."""

from __future__ import annotations

from pathlib import Path

# Records that mark a folder as mlrun's: a run (manifest.json), a compress stage or folder, an export.
_MLRUN_RECORDS = ("manifest.json", "stage.json", "compress.json", "export.json")
# Files mlrun writes in such folders (a run's, a stage's, a search's, an export's): --out never replaces one.
_WRITTEN_BY_MLRUN = {
    *_MLRUN_RECORDS,
    *("config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "best.safetensors", "trained.json"),
    *("compressed.safetensors", "preprocessing.pkl", "preprocessing.json", "trials.csv", "pareto.json"),
    "example_inputs.safetensors",
    *("best.yaml", "journal.log", "pbt.json", "lr_find.json", "profile.json", "mlflow_run.json"),
}


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


def check_not_overwriting(path: Path, what: str, inputs: tuple[Path, ...] = ()) -> None:
    """Exit 2 when a file the command line named would replace the command's own input, or a record mlrun
    keeps in one of its folders (a run's metrics.jsonl, a stage's stage.json, anything in checkpoints/):
    a command replaces only what it wrote itself (DESIGN §3). Other files there are the user's."""
    from mlrun.errors import UsageError

    target = path.resolve()
    if any(target == given.resolve() for given in inputs):
        raise UsageError(f"{what}: '{path}' is the command's input; writing it would replace it. Give another file")
    for folder in target.parents:
        if any((folder / record).is_file() for record in _MLRUN_RECORDS):
            inside = target.relative_to(folder).parts
            if target.name in _WRITTEN_BY_MLRUN or "checkpoints" in inside[:-1]:
                raise UsageError(f"{what}: '{path}' is a record of the mlrun folder '{folder}'; give another file name")
            return
