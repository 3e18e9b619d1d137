"""A trained model ready for new inputs: from a run directory or an export folder.

A run directory is loaded as `mlrun eval` loads it, with the run's own fitted preprocessing, but from
what the run recorded (example_inputs.safetensors, preprocessing.json / .pkl) rather than its data, so a
run or compress stage whose training data moved still predicts (one trained before that record rebuilds
its data); scores then come from the same evaluation code as `mlrun eval`. An export folder is
self-contained: config.yaml, export.json, preprocessing.json / preprocessing.pkl and the model file, run by
the format's own runtime.
"""

from __future__ import annotations

import itertools
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlrun.errors import UsageError


@dataclass
class Predictor:
    config: Any  # ExperimentConfig of the run
    meta: Any  # DataMeta: task, input shape, classes
    preprocessing: dict  # what the data source recorded: classes, tabular columns, image size, tokenizer
    transform: object | None  # the fitted scikit-learn pipeline of tabular runs
    forward: Callable  # a batch's features (a tensor or named tensors, on CPU) -> model outputs
    loss_fn: Any
    metrics: list
    weights: Path  # the file the model came from
    score: Callable  # dataset -> {"loss": ..., "<metric>": ...}, the same figures as `mlrun eval`
    quantize: str = "none"  # how the weights run: int8 for a compress stage after qat and for int8 exports


def load_predictor(path: Path, checkpoint: str) -> Predictor:
    if (path / "export.json").is_file():
        if checkpoint != "final":  # was ignored: the export's own model predicted
            raise UsageError(
                f"--checkpoint {checkpoint}: '{path}' is an export folder, which holds one model; predict with the "
                f"run it came from ({path.parent.parent}) to choose a checkpoint, or export that checkpoint"
            )
        return _from_export(path)
    if (path / "config.yaml").is_file():
        return _from_run(path, checkpoint)
    raise UsageError(
        f"'{path}' is neither a run directory (config.yaml) nor an export folder (export.json); "
        "pass runs/<name> or runs/<name>/export/<format>-<quant>"
    )


def _from_run(run_dir: Path, checkpoint: str) -> Predictor:
    import torch

    from mlrun.engine.restore import load_trained
    from mlrun.export.quantize import apply_quantization, deployed_quantization

    trained = load_trained(run_dir, checkpoint, needs_data=False)  # new inputs come with their own file
    parts = trained.parts
    # A compress stage after qat is deployed with int8 layers: predict with those, as eval scores them.
    quantize = deployed_quantization(run_dir)
    model = apply_quantization(parts.model.eval(), quantize, calibration=None)[0]

    def forward(features):
        from mlrun.data.batch import move_batch
        from mlrun.models.outputs import call_model

        # Scoring may have moved the model to the accelerator; int8 layers hold their weights as buffers.
        device = next(itertools.chain(model.parameters(), model.buffers())).device
        features = move_batch(features, device) if isinstance(features, dict) else features.to(device)
        with torch.inference_mode():
            return call_model(model, features)

    def score(dataset) -> dict:
        from accelerate import Accelerator

        from mlrun.engine.batches import eval_loader
        from mlrun.engine.evaluate import evaluate

        # Exactly what `mlrun eval` runs, so the figures on the same rows are the same.
        accelerator = Accelerator(rng_types=[], cpu=True)
        prepared, loader = accelerator.prepare(model, eval_loader(dataset, parts.config.data, False))
        return _plain_keys(evaluate(accelerator, prepared, loader, parts.objective, parts.metrics))

    bundle = parts.bundle
    return Predictor(
        parts.config,
        bundle.meta,
        bundle.preprocessing or {},
        bundle.transform,
        forward,
        parts.loss_fn,
        parts.metrics,
        trained.weights,
        score,
        quantize,
    )


def _from_export(folder: Path) -> Predictor:
    from mlrun.config.load import load_config
    from mlrun.data.bundle import meta_from_record
    from mlrun.engine.build import build
    from mlrun.export.formats import EXPORT_FORMATS
    from mlrun.export.verify import evaluate

    info = json.loads((folder / "export.json").read_text())
    meta = meta_from_record(info["data_meta"])
    # Only what is built here: the exported file runs the model by itself (a safetensors export rebuilds
    # it, importing its code, in its loader), so a user model's module need not travel with an ONNX file.
    config = load_config(folder / "config.yaml", components=("loss", "metrics"))
    preprocessing_file = folder / "preprocessing.json"
    preprocessing = json.loads(preprocessing_file.read_text()) if preprocessing_file.is_file() else {}
    tokenizer = preprocessing.get("tokenizer", {})
    if "path" in tokenizer and not Path(tokenizer["path"]).is_absolute():  # the export's own copy
        tokenizer["path"] = str(folder / tokenizer["path"])
    transform = None
    if (folder / "preprocessing.pkl").is_file():
        with (folder / "preprocessing.pkl").open("rb") as file:
            transform = pickle.load(file)
    from mlrun.export.signature import as_tensors

    run = EXPORT_FORMATS[info["format"]].load(folder / info["file"])

    def forward(features):  # exported files take the features as positional inputs
        return run(*as_tensors(features, meta))

    loss_fn = build(config.loss, meta)
    metrics = [build(spec, meta) for spec in config.metrics]
    batch = config.data.eval_batch_size or 256

    def score(dataset) -> dict:
        return _plain_keys(evaluate(run, dataset, meta, batch, loss_fn, metrics))

    quantize = info.get("quantize", "none")
    return Predictor(
        config, meta, preprocessing, transform, forward, loss_fn, metrics, folder / info["file"], score, quantize
    )


def _plain_keys(results: dict) -> dict:
    """`val/accuracy` -> `accuracy`: these figures are on the given file, not the validation split."""
    return {key.removeprefix("val/"): value for key, value in results.items()}


def predict_rows(predictor, inputs) -> list[dict[str, Any]]:
    """One record per sample: its name (row, file or line), its label when given, the prediction."""
    from mlrun.data.batch import split_batch
    from mlrun.data.bundle import fetch_batch
    from mlrun.prediction.outputs import prediction_tensor, records

    dataset, rows = inputs.dataset, []
    classes = predictor.preprocessing.get("classes")
    size = predictor.config.data.eval_batch_size or 256
    for start in range(0, len(dataset), size):
        indices = list(range(start, min(start + size, len(dataset))))
        features, targets = split_batch(fetch_batch(dataset, indices))
        outputs = prediction_tensor(predictor.forward(features)).cpu()
        for index, record in zip(indices, records(outputs, predictor.meta.task, classes)):
            label = {}
            if inputs.labelled:
                target = targets[index - start]
                label = {"label": classes[int(target)] if classes and not target.is_floating_point() else target.item()}
            rows.append({**inputs.ids[index], **label, **record})
    return rows
