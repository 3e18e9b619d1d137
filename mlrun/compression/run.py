"""Chains the `compress:` stages from a trained run, fine-tuning each through the training loop.

    runs/<name>/compress/
      1-prune_structured/   config.yaml (the run's config + model_edits), model.safetensors, stage.json,
                            train/ (the fine-tuning: a normal run directory, resumable)
      2-distill/ ...
      trained.json          the trained model's figures, measured once (a rerun compares with the same)
      compress.json         every stage's figures beside the trained model's

A stage whose stage.json records the same settings and the same input is reused, so a rerun after an
interruption goes on where it stopped: a fine-tuning with checkpoints resumes exactly. A folder holds
one chain and is never rewritten by another: a chain that differs from compress/'s (other settings,
fewer stages, retrained input) goes to the next free compress-2/, compress-3/, ..., starting from
copies of the finished stages it shares with the folder it differs from.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import io
import itertools
import json
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mlrun.compression.measure import evaluate_deployed, measure
from mlrun.compression.stage import Stage, StageContext
from mlrun.config.errors import SourceMap
from mlrun.config.load import apply_override, as_override, load_config, validate_raw
from mlrun.config.schema import ExperimentConfig, StageSpec
from mlrun.engine.example_inputs import EXAMPLE_INPUTS
from mlrun.engine.run_dir import read_json, read_summary, write_config, write_json
from mlrun.errors import UsageError
from mlrun.export.latency import SPREAD_LIMIT
from mlrun.models.structure import adds_layers
from mlrun.models.weights_file import save_weights
from mlrun.registry import stages, techniques

EXAMPLE = """compress:
  - {name: prune_structured, ratio: 0.5, finetune: {train.epochs: 3}}
  - {name: qat, finetune: {train.epochs: 2, optimizer.lr: 1.0e-4}}"""

DATA_RECORDS = ("preprocessing.pkl", "preprocessing.json", EXAMPLE_INPUTS)


@dataclass(frozen=True)
class ModelSource:
    """A model to compress: the config that builds it, its weights, and where its preprocessing lies."""

    config: ExperimentConfig
    weights: Path
    run_dir: Path  # holds preprocessing.pkl when the data fits one
    quantize: str | None  # int8 once a QAT stage ran
    key: str  # identifies these weights and how they were made


def run_compress(
    specs: list[StageSpec], source_dir: Path, root: Path | None = None, shared_stages: Path | None = None
) -> dict[str, Any]:
    """Run `specs` in order from the final weights of `source_dir`; returns compress.json's content.

    `root`: the folder of the chain's stages (a compress search's trial folder); default compress/ or
    the compress-N/ chosen by `chain_folder`. `shared_stages`: a folder several chains share (a compress
    search's): each stage goes to a folder named by its key (settings and input), so chains that begin
    alike compute their common stages once; compress.json still goes to `root`."""
    # Every stage applies, before any work is written; quietly, as each stage says its piece when it runs.
    specs, trained, source = checked_chain(specs, source_dir, quiet=True)
    root = root or chain_folder(source_dir, specs, source.key)
    rows = [{"stage": "trained", "dir": str(source_dir), **trained_figures(trained, source, shared_stages or root)}]
    for index, spec in enumerate(specs, 1):
        name = f"{index}-{re.sub(r'[^A-Za-z0-9._-]', '-', spec.name)}"  # user code "module:function" too
        stage_dir = shared_stages / f"{name}-{stage_key(spec, source.key)}" if shared_stages else root / name
        source = run_stage(spec, source, stage_dir)
        result = read_json(stage_dir / "stage.json")["result"]
        loaded = stage_dir / result.get("file", "model.safetensors")  # the file eval and export load
        rows.append({"stage": spec.name, "dir": str(stage_dir), **result, "file_bytes": loaded.stat().st_size})
    for row in rows[1:]:
        row["vs_trained"] = ratios(rows[0], row)
    mark_latency_trust(rows)
    report = {"source": str(source_dir), "folder": str(root), "stages": rows}
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "compress.json", report)
    return report


def mark_latency_trust(rows: list[dict[str, Any]]) -> None:
    """`latency_trusted` of each row (the trained model's first): false when its timing, or the trained
    model's that its speedups divide by, varied past SPREAD_LIMIT (another process held the CPU)."""
    quiet = [row.get("latency_spread", 0.0) <= SPREAD_LIMIT for row in rows]
    for row, own in zip(rows, quiet):
        row["latency_trusted"] = own and quiet[0]


# --- which folder a chain goes to -------------------------------------------------------------------

_STAGE_DIR = re.compile(r"(\d+)-")
TRAINED = "trained.json"  # the trained model's figures, measured once per chain folder (or search)
CHAIN_FOLDER = re.compile(r"compress(-\d+)?")


def stage_key(spec: StageSpec, input_key: str) -> str:
    """Identifies a stage's result: its settings and the key of its input (`enabled` is not a setting of
    the result: the keys of chains made before it existed stay the same)."""
    settings = spec.model_dump(mode="json", exclude={"enabled"})
    for name in _report_settings(spec):  # what the stage reports beside its result, not the result
        settings.pop(name, None)
    if spec.finetune is None:  # keyed as what it means: chains made when the default was {} keep their keys
        settings["finetune"] = {} if fine_tunes(spec) else False
    if ":" in spec.name:  # the user's own stage: an edit of its module makes a new result, not a reused one
        settings["code"] = _source_hash(stages.get(spec.name))
    return hashlib.sha256(json.dumps([settings, input_key]).encode()).hexdigest()[:16]


def _report_settings(spec: StageSpec) -> tuple[str, ...]:
    """Settings that change only what a single-round stage reports (trait `report_settings`: distill's baseline
    arm and its seeds), so changing them reuses its result and the arms already trained."""
    return stages.trait(spec.name, "report_settings", ()) if spec.rounds == 1 else ()


def _source_hash(factory) -> str | None:
    try:
        return hashlib.sha256(Path(inspect.getfile(factory)).read_bytes()).hexdigest()[:16]
    except (TypeError, OSError):  # not defined in a file of its own
        return None


def chain_folder(source_dir: Path, specs: list[StageSpec], trained_key: str) -> Path:
    """compress/ or the compress-N/ holding this chain or its beginning; otherwise the next free one.

    A folder whose stages are not a beginning of this chain holds another chain (a user's earlier
    results, exports made inside its stages): it is left as it is.
    """
    keys, key = [], trained_key
    for spec in specs:
        key = stage_key(spec, key)
        keys.append(key)
    nearest, shared = None, 0
    names = itertools.chain(["compress"], (f"compress-{n}" for n in itertools.count(2)))
    for folder in (source_dir / name for name in names):
        held = _held_keys(folder)
        if held is None:
            break
        if held == keys[: len(held)]:
            return folder  # this chain, interrupted or extended
        common = next((i for i, (a, b) in enumerate(zip(held, keys)) if a != b), min(len(held), len(keys)))
        if nearest is None or common > shared:
            nearest, shared = folder, common
    if nearest is None:
        return folder  # the first chain of this run
    print(
        f"mlrun: compress: {nearest} holds another chain and is kept; this chain goes to {folder}"
        + (f" (its first {shared} stage(s) copied from there)" if shared else ""),
        file=sys.stderr,
    )
    for stage in sorted(_stage_dirs(nearest), key=_stage_index)[:shared]:
        if (read_json(stage / "stage.json") or {}).get("status") == "done":
            shutil.copytree(stage, folder / stage.name, ignore=shutil.ignore_patterns("export*"), copy_function=_link)
    if shared and (nearest / TRAINED).is_file():  # the copied stages' figures compare with this measurement
        shutil.copy2(nearest / TRAINED, folder / TRAINED)
    return folder


def _held_keys(folder: Path) -> list[str | None] | None:
    """The keys of a folder's stages in order, or None when there is no such folder."""
    if not folder.is_dir():
        return None
    stage_dirs = sorted(_stage_dirs(folder), key=_stage_index)
    return [(read_json(stage / "stage.json") or {}).get("key") for stage in stage_dirs]


def _stage_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and _STAGE_DIR.match(p.name)]


def _stage_index(stage: Path) -> int:
    return int(_STAGE_DIR.match(stage.name).group(1))


def _link(source: str, target: str) -> None:
    """Copy a finished stage's file as a hard link where the filesystem allows (stage files are never rewritten)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def trained_figures(trained, source: ModelSource, folder: Path) -> dict[str, Any]:
    """The trained model's figures, measured once per weights and kept beside the stages (trained.json).
    A rerun reuses its stages' figures, so it reuses these too: a fresh timing of the trained model
    beside a stage timed on another, quieter moment made speedups read 250x (and 170x in a user trial
    whose rerun timed the trained model 100x slower, steadily, beside the first run's stages). A record
    timed on a busy CPU (spread above the limit) is measured again only where no finished stage was timed
    against it, so removing the stage folders times them and the trained model again on a quiet machine;
    within one command (a search's trials) it stays as measured, so every trial's ratios are against the
    same figures."""
    cached, here = read_json(folder / TRAINED) or {}, (str(folder.resolve()), source.key)
    if cached.get("key") == source.key and (
        cached["figures"].get("latency_spread", 0.0) <= SPREAD_LIMIT
        or here in _TIMED_IN_THIS_COMMAND
        or _timed_stages(folder)
    ):
        return cached["figures"]
    figures = {**measure(trained.parts.model, trained.parts, None), "file_bytes": source.weights.stat().st_size}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / TRAINED, {"key": source.key, "figures": figures})
    _TIMED_IN_THIS_COMMAND.add(here)
    return figures


_TIMED_IN_THIS_COMMAND: set[tuple[str, str]] = set()  # (folder, key) of trained.json records measured here


def _timed_stages(folder: Path) -> bool:
    """Whether a finished stage in the chain folder holds figures timed beside its trained.json."""
    return folder.is_dir() and any(
        (read_json(stage / "stage.json") or {}).get("status") == "done" for stage in _stage_dirs(folder)
    )


def ratios(base: dict[str, Any], row: dict[str, Any]) -> dict[str, float]:
    """How much smaller and faster than the trained model, and the change of each metric."""
    return {
        "smaller": base["bytes"] / row["bytes"],
        "smaller_huffman": base["bytes"] / row["huffman_bytes"],
        "smaller_file": base["file_bytes"] / row["file_bytes"],  # fp32 model.safetensors against the loadable file
        "fewer_macs": base["macs"] / max(row["macs"], 1),
        "speedup_b1": base["latency_ms_b1"] / row["latency_ms_b1"],
        "speedup_b64": base["latency_ms_b64"] / row["latency_ms_b64"],
        **{f"delta_{k}": row["metrics"][k] - v for k, v in base["metrics"].items() if k in row["metrics"]},
    }


# --- one stage ----------------------------------------------------------------------------------------


def run_stage(spec: StageSpec, source: ModelSource, stage_dir: Path) -> ModelSource:
    """The stage's result, computed or (same settings, same input) reused."""
    from mlrun.engine.restore import load_trained

    key = stage_key(spec, source.key)
    record = read_json(stage_dir / "stage.json") or {}
    if stage_dir.exists() and record.get("key") != key:  # chain_folder chose a folder of this chain
        raise UsageError(f"compress: '{stage_dir}' holds another stage ({record.get('key')}); move it away and rerun")
    if record.get("status") == "done":
        if _reported(record["spec"], spec) != _reported(spec.model_dump(mode="json"), spec):
            report_again(spec, source, stage_dir, record)
        else:
            print(f"mlrun: compress: {stage_dir.name} was done with these settings; reusing it", file=sys.stderr)
        return _result_source(stage_dir, record)
    stage_dir.mkdir(parents=True, exist_ok=True)
    record = {"key": key, "spec": spec.model_dump(mode="json"), "status": "running", **record}
    write_json(stage_dir / "stage.json", record)  # an interrupted fine-tuning is then resumed, not redone
    current = _result_source(stage_dir, record) if record.get("rounds_done") else source
    for round_ in range(record.get("rounds_done", 0) + 1, spec.rounds + 1):
        current, report = run_round(spec, source, current, stage_dir, round_)
        record.update(rounds_done=round_, quantize=current.quantize, report=report)
        write_json(stage_dir / "stage.json", record)
    result = load_trained(stage_dir, str(stage_dir / "model.safetensors"))
    packed = None
    if store := stages.trait(spec.name, "stored"):  # the stage's own file (packed indices + codebooks)
        packed = store(result.parts.model)
        packed.write(stage_dir / "compressed.safetensors")
        # Measured as loaded back from that file, so the figures are the file's (decoding is exact).
        result = load_trained(stage_dir, str(stage_dir / "compressed.safetensors"))
    figures = measure(result.parts.model, result.parts, current.quantize, packed)
    if packed:
        figures["file"] = "compressed.safetensors"
    record.update(status="done", result={**figures, "report": record.pop("report", {})})
    write_json(stage_dir / "stage.json", record)
    return _result_source(stage_dir, record)


def _reported(spec_data: dict[str, Any], spec: StageSpec) -> dict[str, Any]:
    return {name: spec_data.get(name) for name in _report_settings(spec)}


def report_again(spec: StageSpec, source: ModelSource, stage_dir: Path, record: dict[str, Any]) -> None:
    """A done stage whose report settings changed (distill's seeds): the report is made again from its
    fine-tuning run, reusing every arm that finished (paired_arms trains only the new seeds)."""
    from mlrun.engine.restore import load_trained

    print(
        f"mlrun: compress: {stage_dir.name} was done; only what it reports changed "
        f"({', '.join(_report_settings(spec))}): reusing its result and the runs that finished, reporting again",
        file=sys.stderr,
    )
    trained = load_trained(source.run_dir, str(source.weights))
    stage = _plan(spec, trained.parts.model, trained, source, 1, 1)
    train_dir = stage_dir / "train"
    if stage.compare is not None:
        stage.report.update(stage.compare(load_config(train_dir / "config.yaml"), train_dir))
    record.update(spec=spec.model_dump(mode="json"))
    record["result"]["report"] = stage.report
    write_json(stage_dir / "stage.json", record)


def run_round(
    spec: StageSpec, first_input: ModelSource, current: ModelSource, stage_dir: Path, round_: int
) -> tuple[ModelSource, dict[str, Any]]:
    """Apply the stage once and fine-tune; the result is written to stage_dir (config + weights)."""
    from mlrun.engine.restore import load_trained

    trained = load_trained(current.run_dir, str(current.weights))
    stage = _plan(spec, trained.parts.model, trained, first_input, round_, spec.rounds)
    output = output_config(current.config, stage, stage_dir)
    if round_ > 1:  # the first round was checked with the whole chain (checked_chain), before any work
        check_rebuilds(spec, stage, output, trained.parts.bundle.meta)
    quantize = stages.trait(spec.name, "quantize") or current.quantize
    train_dir = stage_dir / ("train" if spec.rounds == 1 else f"train-{round_}")
    if not fine_tunes(spec):
        model = stage.model
    else:
        start = stage_dir / f"start-{round_}.safetensors"
        save_weights(stage.model, start)
        tuned = finetune_config(output, stage, spec, start, train_dir, stage.objective)
        _train(tuned, train_dir)
        model = load_trained(train_dir).parts.model
        if stage.compare is not None:  # the baseline arm of distill: figures of runs beside this one
            stage.report.update(stage.compare(tuned, train_dir))
    if stage.finish is not None and round_ == spec.rounds:
        model = stage.finish(model)
    save_weights(model, stage_dir / "model.safetensors")
    write_config(stage_dir, output.model_dump(mode="json"))
    # The records that stand for the run's data (its fitted preprocessing, the model's example inputs): the stage
    # exports, evaluates and predicts like its run, with --no-verify without the data (engine/example_inputs.py).
    for name in DATA_RECORDS:
        recorded = current.run_dir / name
        if recorded.is_file() and recorded.parent != stage_dir:
            shutil.copy(recorded, stage_dir / name)
    return ModelSource(output, stage_dir / "model.safetensors", stage_dir, quantize, current.key), stage.report


def _plan(spec: StageSpec, model: nn.Module, trained, first_input: ModelSource, round_: int, rounds: int) -> Stage:
    """Call the stage's factory (a usage error names the stage)."""
    from mlrun.data.bundle import example_features

    parts = trained.parts
    example = example_features(parts.bundle.train, parts.config.data.batch_size)
    context = StageContext(
        config=parts.config,
        meta=parts.bundle.meta,
        example=example,
        source_run=_source_run(first_input),
        round=round_,
        rounds=rounds,
        finetune_steps=_finetune_steps(spec, parts),
        evaluate=lambda candidate, quantize: evaluate_deployed(candidate, parts, quantize),
    )
    try:
        stage = stages.build(spec.name, model, context, **spec.settings)
    except (UsageError, ValueError) as exc:  # a stage's own message may begin with its name already
        text = str(exc).removeprefix(f"{spec.name}: ")
        named = text.startswith(f"stage '{spec.name}'")  # the user's own stage failing (the registry names it)
        raise UsageError(f"compress {text}" if named else f"compress stage '{spec.name}': {text}") from None
    if not isinstance(stage, Stage):  # the user's own stage
        raise UsageError(
            f"compress stage '{spec.name}' returned {type(stage).__name__}, not a mlrun.compression.stage.Stage; "
            "return Stage(model=...) with what the stage did"
        )
    return stage


def _source_run(source: ModelSource) -> Path:
    """The trained run at the root of the chain (stage folders live in <run>/compress/)."""
    run = source.run_dir
    return run.parent.parent if CHAIN_FOLDER.fullmatch(run.parent.name) else run


def fine_tunes(spec: StageSpec) -> bool:
    """Whether the stage's result is fine-tuned: `finetune: false` says no, and a stage that keeps the
    model's function (registry trait `exact`, e.g. fold_batchnorm) is not unless `finetune:` is given."""
    if spec.finetune is None:
        return not stages.trait(spec.name, "exact", False)
    return spec.finetune is not False


def _finetune_steps(spec: StageSpec, parts) -> int:
    from mlrun.engine.build import plan_steps

    if not fine_tunes(spec):
        return 0
    config = _with_overrides(parts.config.model_dump(mode="json"), spec.finetune or {})
    return plan_steps(len(parts.bundle.train), config.data, config.train).total_steps


def checked_chain(
    specs: list[StageSpec], source_dir: Path, quiet: bool = False
) -> tuple[list[StageSpec], Any, ModelSource]:
    """The enabled stages, the trained run and its weights as the chain's first input, once every stage
    has applied to a copy of the run's model (exit 2 naming the stage that cannot; nothing is written).
    `mlrun compress` runs the chain next (`quiet`: what the stages print now, they print again then);
    `mlrun validate` stops here."""
    from mlrun.engine.restore import load_trained

    if not specs:
        raise UsageError(f"compress: the config lists no stages; add a section such as\n{EXAMPLE}")
    specs = [spec for spec in specs if spec.enabled]
    if not specs:
        raise UsageError("compress: every stage has enabled: false; enable at least one")
    trained = load_trained(source_dir)  # exit 2 when the run has no final weights
    if any(spec.name == "lora" for spec in trained.parts.config.techniques):
        raise UsageError(
            f"compress: {source_dir} was trained with LoRA adapters, which no stage handles yet (a stage would prune "
            "them, or rebuild the model without them). Compress a run trained without LoRA, or merge the adapters "
            f"(mlrun export {source_dir} --format safetensors) and train briefly from that file without LoRA: "
            f"init_from={{path: {source_dir}/export/safetensors-none/model.safetensors, prefix: {{'model.': ''}}}}"
        )
    if not quiet:  # `mlrun compress` and a search warn once, not at every chain they check
        warn_of_undoing(specs)
    weights = trained.weights
    source = ModelSource(load_config(source_dir / "config.yaml"), weights, source_dir, None, file_key(weights))
    with _quietly() if quiet else contextlib.nullcontext():
        check_stages(specs, trained, source)
    return specs, trained, source


def warn_of_undoing(specs: list[StageSpec]) -> None:
    """A stage that undoes an earlier one, run as asked with a warning: any stage after one that stores its
    own packed file (cluster: the later results are stored dense, and fine-tunes move the shared values),
    or a stage declaring it (trait `undoes`: low_rank's dense factors after prune)."""
    specs = [spec for spec in specs if spec.enabled]
    for later, spec in enumerate(specs, 1):
        undone = [
            f"{i}-{earlier.name}"
            for i, earlier in enumerate(specs[: later - 1], 1)
            if earlier.name in stages.trait(spec.name, "undoes", ())
            or (stages.trait(earlier.name, "stored") and not stages.trait(spec.name, "stored"))
        ]
        if undone:
            print(
                f"mlrun: warning: compress: {later}-{spec.name} undoes what {', '.join(undone)} made (its zeros or "
                f"packed shared values are not kept); run {spec.name} before it",
                file=sys.stderr,
            )


@contextlib.contextmanager
def _quietly():
    """Without stderr. The warnings hidden here are not marked as shown: Python shows a warning once per
    place in the code, and catch_warnings resets that record on exit, so the run shows them."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        yield


def check_stages(specs: list[StageSpec], trained, source: ModelSource) -> None:
    """Apply every stage once, in order, to a copy of the trained model, without fine-tuning: a stage
    that cannot apply exits 2 here, before any stage writes anything."""
    model, config = copy.deepcopy(trained.parts.model), trained.parts.config
    for index, spec in enumerate(specs, 1):
        stage = _plan(spec, model, trained, source, 1, spec.rounds)
        config = output_config(config, stage, Path(f"{index}-check"))
        check_rebuilds(spec, stage, config, trained.parts.bundle.meta)
        model = stage.model


def check_rebuilds(spec: StageSpec, stage: Stage, output: ExperimentConfig, meta) -> None:
    """The stage's model has the tensors its config rebuilds (the structure recorded as edits or a
    student), so that its weights load back for fine-tuning, eval and export: exit 2 otherwise."""
    from mlrun.models.saved import build_configured_model

    def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
        return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}

    made, rebuilt = shapes(stage.model), shapes(build_configured_model(output, meta))
    if made != rebuilt:
        differ = sorted(k for k in made.keys() & rebuilt.keys() if made[k] != rebuilt[k])
        only_made, only_rebuilt = sorted(made.keys() - rebuilt.keys()), sorted(rebuilt.keys() - made.keys())
        fix = (
            "A stage that changes the structure records it in Stage.edits (mlrun.models.edits) or Stage.model_spec"
            if ":" in spec.name  # the user's own stage
            else "A gap in mlrun, not in your config (seen with early-exit heads and LoRA adapters): leave the "
            "stage out for this model"
        )
        raise UsageError(
            f"compress stage '{spec.name}' returned a model its config does not rebuild: only in the stage's "
            f"{only_made[:4]}, only in the rebuilt {only_rebuilt[:4]}, other shapes {differ[:4]}. {fix}"
        )


# --- configs ------------------------------------------------------------------------------------------


def output_config(input_config: ExperimentConfig, stage: Stage, stage_dir: Path) -> ExperimentConfig:
    """The config that rebuilds the stage's result: the input's, plus its edits (or the student)."""
    data = input_config.model_dump(mode="json")
    data.update(
        name=stage_dir.name,
        output_dir=str(stage_dir.parent),
        compress=[],
        init_from=None,
        model_edits=[*data["model_edits"], *stage.edits],
        # Training techniques (EMA, masks) are not part of the result; those that add layers are.
        techniques=[t for t in data["techniques"] if adds_layers(t["name"])],
    )
    if stage.model_spec is not None:
        data["model"], data["model_edits"] = stage.model_spec, [*stage.edits]
    return validate_raw(data, SourceMap())


def finetune_config(
    output: ExperimentConfig,
    stage: Stage,
    spec: StageSpec,
    start: Path,
    train_dir: Path,
    objective: dict[str, Any] | None,
) -> ExperimentConfig:
    """The result's config as a training run: `finetune:` overrides, the stage's techniques and objective."""
    data = output.model_dump(mode="json")
    data.update(name=train_dir.name, output_dir=str(train_dir.parent), init_from={"path": str(start)})
    config = _with_overrides(data, spec.finetune or {})
    data = config.model_dump(mode="json")
    data["techniques"] = [*data["techniques"], *keep_pruned(stage), *stage.techniques]
    if objective is not None:
        data["objective"] = objective
    return validate_raw(data, SourceMap())


def keep_pruned(stage: Stage, share: float = 0.05) -> list[dict[str, Any]]:
    """A technique holding earlier stages' zeros at zero while this stage fine-tunes (prune, then distill)."""
    from mlrun.models.addressing import weight_layers

    if any(techniques.trait(t["name"], "holds_zeros", False) for t in stage.techniques):
        return []  # the stage prunes itself: magnitude ranking keeps the zeros lowest
    sparse = [n for n, m in weight_layers(stage.model, [], True) if float((m.weight == 0).float().mean()) >= share]
    if not sparse:
        return []
    return [{"name": "magnitude_pruning", "sparsity": 0.0, "keep_zeros": True, "layers": sparse, "include_head": True}]


def _with_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> ExperimentConfig:
    sources = SourceMap()
    for key, value in overrides.items():
        apply_override(data, sources, as_override(key, value))
    try:
        return validate_raw(data, sources)
    except UsageError as exc:
        raise UsageError(f"compress: finetune: {exc}") from None


def _train(config: ExperimentConfig, train_dir: Path) -> None:
    from mlrun.engine.run import run_training

    summary = read_summary(train_dir)
    if summary and summary.get("status") in ("completed", "early_stopped"):
        return  # fine-tuned before this interruption
    run_training(config, resume="auto")


def _result_source(stage_dir: Path, record: dict[str, Any]) -> ModelSource:
    config = load_config(stage_dir / "config.yaml")
    return ModelSource(config, stage_dir / "model.safetensors", stage_dir, record.get("quantize"), record["key"])


def file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
