"""A trained run back in memory: its resolved config, components and chosen weights (eval, export)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from mlrun.config.load import load_config
from mlrun.config.schema import ExperimentConfig, ObjectiveSpec
from mlrun.data.bundle import DatasetBundle, load_fitted_transform
from mlrun.engine.build import Components, build_components, build_data
from mlrun.engine.dcp_state import has_dcp_state, load_dcp_weights
from mlrun.engine.example_inputs import read_example_inputs
from mlrun.engine.run_dir import read_summary
from mlrun.errors import DataUnavailable, UsageError, did_you_mean
from mlrun.models.packed_weights import is_packed, load_packed
from mlrun.models.weights_file import load_weights
from mlrun.registry import objectives, techniques


@dataclass
class TrainedRun:
    run_dir: Path
    parts: Components
    weights: Path


def resolve_weights(run_dir: Path, checkpoint: str) -> Path:
    """`final` (model.safetensors), `best` (best.safetensors), `compressed`, `latest` or `step-N` (a checkpoint
    by name), a .safetensors file or a checkpoint folder. In a compress stage folder that holds
    compressed.safetensors (a cluster stage's packed file) `final` is that file: eval, predict and export then
    score the stored file itself."""
    packed = run_dir / "compressed.safetensors"
    if checkpoint == "compressed" or (
        checkpoint == "final" and packed.is_file() and (run_dir / "stage.json").is_file()
    ):
        if not packed.is_file():
            raise UsageError(
                f"'{run_dir}' has no compressed.safetensors (a cluster compress stage writes one); "
                "pass a cluster stage's folder, or --checkpoint <stage>/model.safetensors for the dense weights"
            )
        return packed
    if checkpoint in ("final", "best"):
        path = run_dir / ("model.safetensors" if checkpoint == "final" else "best.safetensors")
        if not path.is_file() and (run_dir / "stage.json").is_file():  # a compress stage keeps one result
            tuned = run_dir / "train"
            raise UsageError(
                f"'{run_dir}' is a compress stage: it holds its result only (--checkpoint final)"
                + (f"; its fine-tuning is a run of its own, with its checkpoints: {tuned}" if tuned.is_dir() else "")
            )
        if not path.is_file():
            summary = read_summary(run_dir) or {}
            hint = "train with train.best set" if checkpoint == "best" else unfinished_hint(run_dir, summary)
            raise UsageError(f"run '{run_dir}' has no {path.name} (status: {summary.get('status', 'unknown')}); {hint}")
        return path
    if checkpoint == "latest" or (checkpoint.startswith("step-") and checkpoint[5:].isdigit()):
        checkpoint = str(_named_checkpoint(run_dir, checkpoint))  # the names init_from.checkpoint takes
    path = Path(checkpoint)
    if path.is_dir() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    if path.is_dir() and has_dcp_state(path):  # an FSDP or asynchronous checkpoint: DCP shards
        return path
    if path.is_file() and path.suffix == ".safetensors":
        return path
    raise UsageError(
        f"--checkpoint: '{checkpoint}' is neither best, final, latest, step-N, a checkpoint folder nor a "
        f".safetensors file.{did_you_mean(checkpoint, ['best', 'final', 'latest', 'compressed'])}"
    )


def unfinished_hint(run_dir: Path, summary: dict) -> str:
    """What to do about a run without final weights, true to what it holds: a run that failed before its
    first checkpoint cannot be resumed (a user trial: 'mlrun train resumes it' of a NaN run with none)."""
    from mlrun.engine.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    if latest is not None:
        return f"finish training (mlrun train resumes it from {latest.name}), or pass --checkpoint latest"
    if summary.get("status") == "failed":
        why = str(summary.get("message", "")).split(". ")[0]
        return (
            f"it failed before writing a checkpoint{f' ({why})' if why else ''}, so it has no trained weights: "
            "fix the cause and train it again (mlrun train with its name starts it over)"
        )
    return "it has no checkpoint yet: train it (mlrun train with its name starts or resumes it)"


def _named_checkpoint(run_dir: Path, name: str) -> Path:
    """checkpoints/<the newest> for `latest`, checkpoints/step-<N> for `step-N`; exit 2 naming those there are."""
    from mlrun.engine.checkpoint import checkpoint_dir, latest_checkpoint, list_checkpoints

    found = latest_checkpoint(run_dir) if name == "latest" else checkpoint_dir(run_dir, int(name[5:]))
    if found is None or not found.is_dir():
        have = ", ".join(p.name for p in list_checkpoints(run_dir)) or "none"
        raise UsageError(f"--checkpoint {name}: run '{run_dir}' has no such checkpoint (its checkpoints: {have})")
    return found


def recorded_statistics(run_dir: Path, source: str) -> list[str]:
    """Overrides that pin the statistics the run was trained under (its preprocessing.json), for a
    source whose registry entry says how (`recorded_settings`): `mlrun eval RUN data.val_root=NEW`
    changes the training split, and fitting normalisation on it anew would score other inputs."""
    import json

    from mlrun.config.load import as_override
    from mlrun.registry import datasets

    settings = datasets.trait(source, "recorded_settings")
    path = run_dir / "preprocessing.json"
    if settings is None or not path.is_file():
        return []
    recorded = settings(json.loads(path.read_text()))
    return [as_override(f"data.{key}", value) for key, value in recorded.items()]


def check_tokenizer(run_dir: Path) -> None:
    """A tokenizer file or folder replaced since training (same path, other content) would give the model other
    token ids with no error when the vocabulary size stays: exit 2 (runs recorded before the digest pass).
    Its content is read again at the recorded path, whether or not the run's data was built (predict)."""
    import json

    from mlrun.data.tokenize import current_digest

    path = run_dir / "preprocessing.json"
    recorded = (json.loads(path.read_text()).get("tokenizer") or {}) if path.is_file() else {}
    now = current_digest(recorded) if recorded.get("sha256") else None
    if now is not None and now != recorded["sha256"]:
        raise UsageError(
            f"data.tokenizer: '{recorded['path']}' changed since run '{run_dir}' was trained (its content differs from "
            "the one recorded in preprocessing.json), so the model's token ids would mean other tokens; restore "
            "it, or train anew. An export folder keeps its own copy (tokenizer/)"
        )


def note_raw_weights(config: ExperimentConfig, weights: Path) -> None:
    """A checkpoint of a run that evaluated averaged weights (EMA) holds the raw ones: its figures are not
    the logged ones at that step (a user trial read 0.9028 against the logged 0.9528)."""
    if not (weights.name.startswith("step-") or weights.parent.name.startswith("step-")):  # not a checkpoint
        return
    for spec in config.techniques:
        if averaged := techniques.trait(spec.name, "averages"):
            print(
                f"mlrun: note: {weights} holds the raw weights; training evaluated {averaged}, which the run's "
                "model.safetensors and best.safetensors hold",
                file=sys.stderr,
            )


def standalone_objective(config: ExperimentConfig) -> ExperimentConfig:
    """The config with an objective that needs no other run, when the trained one's (a distillation
    teacher) is gone: the model alone is what eval, predict and export use."""
    standalone = objectives.trait(config.objective.name, "standalone")
    replaced = standalone(config.objective.settings) if standalone else None
    if replaced is None:
        return config
    spec, reason = replaced
    print(f"mlrun: note: {reason}", file=sys.stderr)
    return config.model_copy(update={"objective": ObjectiveSpec.model_validate(spec)})


def rebuild_data(config: ExperimentConfig, fitted) -> DatasetBundle:
    """The run's data built again as config.yaml names it; what stops it (a moved or deleted file) is a
    DataUnavailable, which a command that can go on without the data (export --no-verify) names."""
    try:
        return build_data(config.data, config.seed, fitted)
    except DataUnavailable:
        raise
    except UsageError as exc:
        raise DataUnavailable(str(exc)) from None


def load_trained(
    run_dir: Path, checkpoint: str = "final", overrides: list[str] | tuple[str, ...] = (), needs_data: bool = True
) -> TrainedRun:
    """The run's components with its weights loaded. `needs_data` False (export without verification): the
    data the run recorded (example_inputs.safetensors) stands for its splits, so a run whose data was moved
    or deleted still loads; a run without that record builds its data as before."""
    config_path = run_dir / "config.yaml"
    if run_dir.is_file() and (run_dir.parent / "config.yaml").is_file():  # runs/x/model.safetensors, a stage's file
        raise UsageError(
            f"'{run_dir}' is a file; pass the folder that holds it ({run_dir.parent}), and --checkpoint "
            f"{run_dir} to score this file of it"
        )
    if not config_path.is_file():
        raise UsageError(f"'{run_dir}' is not a run directory (no config.yaml); pass runs/<name>")
    if (run_dir / "export.json").is_file():  # its weights are the deployable model's, under other names
        raise UsageError(
            f"'{run_dir}' is an export folder: mlrun predict takes it; eval, compress and init_from={{run: ...}} "
            f"take the run it came from ({run_dir.parent.parent})"
        )
    weights = resolve_weights(run_dir, checkpoint)
    # Inputs prepared as in training, also for data given by overrides; the run's weights are loaded next.
    config = load_config(config_path, overrides)
    kept = load_config(config_path).data.settings.get("classes") if overrides else None
    if overrides and config.data.settings.get("classes") != kept:  # the outputs are the run's classes, in order
        raise UsageError(
            f"data.classes: the run's model scores classes {kept or 'all'} as its outputs; another list would "
            "relabel the samples against them. Give a file of the samples to score instead (data.path=...)"
        )
    pinned = recorded_statistics(run_dir, config.data.name)
    if pinned:  # the user's own overrides come last, so an explicit data.mean still wins
        config = load_config(config_path, [*pinned, *overrides])
    config = standalone_objective(config)
    note_raw_weights(config, weights)
    fitted = load_fitted_transform(run_dir)
    recorded = None if needs_data or overrides else read_example_inputs(run_dir)
    if recorded is not None:
        bundle, train_samples = recorded.bundle, recorded.train_samples
    else:
        bundle, train_samples = rebuild_data(config, fitted), None
    parts = build_components(
        config, fitted_transform=fitted, init_weights=False, bundle=bundle, train_samples=train_samples
    )
    check_tokenizer(run_dir)
    if weights.is_dir():
        missing, unexpected = load_dcp_weights(parts.model, weights)
    elif is_packed(weights):  # a cluster stage's bit-packed file, decoded to the exact dense weights
        missing, unexpected = load_packed(parts.model, weights)
    else:
        try:
            missing, unexpected = load_weights(parts.model, weights, strict=False)
        except RuntimeError as exc:  # other shapes: the data given gives the model other input or output sizes
            raise UsageError(
                f"{weights} does not fit the model built for this data ({parts.bundle.meta.num_classes} classes, "
                f"inputs {parts.bundle.meta.input_shape}): {str(exc).strip().splitlines()[-1].strip().rstrip('.')}. "
                "The run's model takes data like its own: the same classes and features"
            ) from None
    if missing or unexpected:
        raise UsageError(
            f"{weights} does not fit the model of {config_path}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    parts.model.eval()
    return TrainedRun(run_dir, parts, weights)
