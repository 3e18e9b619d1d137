"""`mlrun export RUN_DIR [--format F] [--quantize Q] [--checkpoint C] [--out DIR] [--no-verify] [--json]`.

Writes runs/<name>/export/<format>-<quant>/ with the model file, config.yaml, preprocessing.json
(when the data has fitted preprocessing) and export.json (inputs, outputs, how to load, figures),
then loads the file with its own runtime and compares it with the fp32 PyTorch model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from mlrun.errors import UsageError, did_you_mean
from mlrun.jsonout import print_json

HOW_TO_LOAD = {
    "safetensors": "from mlrun.export.reload import load_exported_model; model = load_exported_model(folder)",
    "pt2": "model = torch.export.load('model.pt2').module()",
    "onnx": "session = onnxruntime.InferenceSession('model.onnx'); session.run(None, {'inputs': x})",
    "torchscript": "model = torch.jit.load('model.ts')",
}


def check_out(out: Path) -> None:
    """--out is a new folder, an empty one, or an earlier export (export.json) that this one replaces."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: '{out}' is an existing file; give a folder path (export writes a folder)")
    if out.is_dir() and any(out.iterdir()) and not (out / "export.json").is_file():
        raise UsageError(
            f"--out: '{out}' holds other files and is not an earlier export (no export.json); "
            "give a new or empty folder, e.g. --out exports/<name>"
        )


def run_export(
    run_dir: Path,
    fmt: str,
    quantize: str | None,
    checkpoint: str,
    out: Path | None,
    calibration_batches: int,
    verify: bool,
    json_output: bool,
) -> None:
    from mlrun.export.formats import FORMATS
    from mlrun.export.quantize import QUANTIZATIONS

    if quantize is None:  # a compress stage trained for int8 (qat, and every stage after it) exports int8
        stage = json.loads((run_dir / "stage.json").read_text()) if (run_dir / "stage.json").is_file() else {}
        quantize = stage.get("quantize") or "none"

    for option, value, allowed in (("--format", fmt, FORMATS), ("--quantize", quantize, QUANTIZATIONS)):
        if value not in allowed:
            raise UsageError(
                f"{option}: unknown '{value}'.{did_you_mean(value, allowed)} Choose: {', '.join(allowed)}."
            )
    if calibration_batches < 1:
        raise UsageError("--calibration-batches must be at least 1")

    from mlrun.engine.restore import load_trained

    if out is not None:
        check_out(out)
    trained = load_trained(run_dir, checkpoint)
    folder = out or run_dir / "export" / export_folder_name(fmt, quantize, checkpoint)
    shutil.rmtree(folder, ignore_errors=True)  # an earlier export of the same kind: export's own, rebuilt now
    folder.mkdir(parents=True)
    merged, lora = merged_for_export(trained)
    info = write_artifact(trained, fmt, quantize, folder, calibration_batches, model=merged)
    if lora:
        info["lora"] = lora
        info["notes"].append(f"LoRA adapters merged in fp32 into {lora['merged_layers']} layers")
    (folder / "export.json").write_text(json.dumps(info, indent=2) + "\n")  # the reload below reads it
    if verify:
        info["verification"] = verify_artifact(trained, fmt, folder, info)
        if slower := slower_than_fp32(info):
            print(f"mlrun: warning: {slower}", file=sys.stderr)
            info["notes"].append(slower)
        (folder / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    from mlrun.tracking.mlflow_run import log_export

    if logged := log_export(run_dir, folder):  # the run was tracked to MLflow: the model joins its run
        info["mlflow_artifacts"] = logged
    if json_output:
        print_json(info)
    else:
        print_report(info, folder)


def export_folder_name(fmt: str, quantize: str, checkpoint: str) -> str:
    """`<format>-<quant>` for the final weights; `-best` or `-<checkpoint>` otherwise, so exports never collide."""
    if checkpoint == "final":
        return f"{fmt}-{quantize}"
    if checkpoint == "best":
        return f"{fmt}-{quantize}-best"
    path = Path(checkpoint)
    return f"{fmt}-{quantize}-{path.stem if path.suffix == '.safetensors' else path.name}"


def slower_than_fp32(info: dict) -> str | None:
    """A quantized export that runs slower than fp32 PyTorch defeats its purpose: say so, with the figures."""
    v = info.get("verification") or {}
    if info["quantize"] == "none" or not v:
        return None
    slower = [f"{v[f'speedup_{b}']:.2f}x at batch {b[1:]}" for b in ("b1", "b64") if v[f"speedup_{b}"] < 1.0]
    if not slower:
        return None
    return (
        f"{info['format']} {info['quantize']} runs slower than fp32 PyTorch on this machine "
        f"({' and '.join(slower)} its speed); try another format (e.g. --format onnx) or --quantize none "
        "where latency matters."
    )


def merged_for_export(trained):
    """(the model to write, LoRA merge figures or None): adapters folded into plain layers in fp32.

    The adapted model stays as it is: verification compares the exported (merged) file with it.
    """
    import torch

    from mlrun.techniques.lora import has_adapters, merge_adapters

    adapted = trained.parts.model
    if not has_adapters(adapted):
        return adapted, None
    from mlrun.export.signature import InferenceModule
    from mlrun.export.verify import agreement, batches

    meta = trained.parts.bundle.meta
    merged = copy.deepcopy(adapted)
    count = merge_adapters(merged)
    merged.eval()
    inputs = next(batches(trained.parts.bundle.val, 256, meta))[0]
    with torch.inference_mode():
        figures = agreement(InferenceModule(adapted, meta), InferenceModule(merged, meta), inputs)
    return merged, {"merged_layers": count, "merged_vs_adapted": figures}


def write_artifact(trained, fmt: str, quantize: str, folder: Path, calibration_batches: int, model=None) -> dict:
    """Write `model` (default the run's model) in `fmt`; returns export.json's fields."""
    import torch

    from mlrun.export import formats
    from mlrun.export.quantize import apply_quantization, linear_layers
    from mlrun.export.signature import InferenceModule, input_names
    from mlrun.export.verify import batches

    parts = trained.parts
    val, meta = parts.bundle.val, parts.bundle.meta
    model, names = InferenceModule(parts.model if model is None else model, meta), input_names(meta)
    example = next(batches(val, min(8, len(val)), meta))[0]  # batch >= 2 so export keeps the batch dimension dynamic
    calibration = None
    if quantize == "int8-static":
        size = parts.config.data.batch_size
        calibration = [x for x, _ in batches(parts.bundle.train, size, meta, limit=calibration_batches * size)]
    notes = []
    if fmt == "onnx":
        # ONNX Runtime quantizes MatMul/Gemm (the linear layers); fp16 converts every float tensor.
        changed = len(linear_layers(model)) if quantize.startswith("int8") else 1
        path = formats.quantize_onnx(
            formats.write("onnx", copy.deepcopy(model), example, names, folder), quantize, calibration or [], names
        )
        if quantize != "none":
            notes.append(f"{quantize} applied by ONNX Runtime to the fp32 ONNX graph")
    else:
        converted, changed = apply_quantization(copy.deepcopy(model), quantize, calibration)
        path = formats.write(fmt, converted, example, names, folder)
        if quantize.startswith("int8"):
            notes.append("int8 linear layers: per-channel int8 weights, torch._int_mm")
    if fmt == "torchscript":
        notes.append("TorchScript is deprecated in PyTorch; prefer --format pt2")
    if quantize != "none" and changed == 0:
        print(
            f"mlrun: warning: --quantize {quantize}: the model has no layer to quantize; the file is unchanged",
            file=sys.stderr,
        )
        notes.append("nothing to quantize")
    shutil.copy(trained.run_dir / "config.yaml", folder / "config.yaml")
    if parts.bundle.preprocessing:
        (folder / "preprocessing.json").write_text(json.dumps(parts.bundle.preprocessing, indent=2) + "\n")
    fitted = trained.run_dir / "preprocessing.pkl"  # the transform fitted during training (tabular data)
    if fitted.exists():
        shutil.copy(fitted, folder / fitted.name)
    tokenizer = (parts.bundle.preprocessing or {}).get("tokenizer", {})
    if tokenizer.get("kind") == "transformers":  # the exported model's own tokenizer travels with it
        shutil.copytree(
            tokenizer["path"], folder / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
        )
        notes.append(
            "tokenizer/: the transformers tokenizer the model was trained with (AutoTokenizer.from_pretrained)"
        )
    return {
        "format": fmt,
        "quantize": quantize,
        "file": path.name,
        "file_bytes": path.stat().st_size,
        "source_weights": str(trained.weights),
        "how_to_load": HOW_TO_LOAD[fmt],
        "inputs": [
            {"name": name, "shape": ["batch", *t.shape[1:]], "dtype": "int64" if t.dtype == torch.long else "float32"}
            for name, t in zip(names, example)
        ],
        "outputs": [{"name": "outputs", "dtype": "float32"}],
        "preprocessing": "preprocessing.json" if parts.bundle.preprocessing else None,
        "data_meta": dataclasses.asdict(meta),
        "notes": notes,
    }


def verify_artifact(trained, fmt: str, folder: Path, info: dict) -> dict:
    """Load the file with its runtime; compare outputs, metric, latency and size with fp32 eager PyTorch."""
    import torch

    from mlrun.export import formats
    from mlrun.export.reload import load_exported_model
    from mlrun.export.signature import InferenceModule
    from mlrun.export.verify import SPREAD_LIMIT, agreement, batches, compare_latency, evaluate, first

    parts = trained.parts
    meta = parts.bundle.meta
    reference = InferenceModule(parts.model, meta)

    def reference_run(*inputs):
        with torch.inference_mode():
            return reference(*inputs)

    candidate = formats.load(fmt, folder / info["file"], reload=lambda: load_exported_model(folder))
    val, eval_size = parts.bundle.val, parts.config.data.eval_batch_size or 256
    inputs = next(batches(val, 256, meta))[0]
    fp32 = evaluate(reference_run, val, meta, eval_size, parts.loss_fn, parts.metrics)
    got = evaluate(candidate, val, meta, eval_size, parts.loss_fn, parts.metrics)
    key = f"val/{parts.metrics[0].name}" if parts.metrics else "val/loss"
    big = first(inputs, 64)
    b1, b64 = (
        compare_latency(reference_run, candidate, first(inputs, 1)),
        compare_latency(reference_run, candidate, big),
    )
    figures = {
        **agreement(reference_run, candidate, inputs),
        "metric": key,
        "metric_fp32": fp32[key],
        "metric_export": got[key],
        "metric_change": got[key] - fp32[key],
        "metrics_export": got,
        "size_ratio_to_fp32": info["file_bytes"] / trained.weights.stat().st_size,
        "batch_for_latency": len(big[0]),
        "latency_ms_b1_fp32": b1["reference_ms"],
        "latency_ms_b1": b1["ms"],
        "latency_ms_b64_fp32": b64["reference_ms"],
        "latency_ms_b64": b64["ms"],
        "speedup_b1": b1["speedup"],
        "speedup_b64": b64["speedup"],
        # Speedups from alternating rounds; their spread says whether the CPU was quiet enough to trust them.
        "speedup_spread_b1": b1["spread"],
        "speedup_spread_b64": b64["spread"],
        "latency_trusted": max(b1["spread"], b64["spread"]) <= SPREAD_LIMIT,
        "threads": torch.get_num_threads(),
    }
    return figures


def print_report(info: dict, folder: Path) -> None:
    print(f"mlrun: exported {info['format']} ({info['quantize']}) to {folder / info['file']}")
    if info.get("mlflow_artifacts"):
        print(f"  logged to the run's MLflow run: {info['mlflow_artifacts']}")
    for note in info["notes"]:
        print(f"  note: {note}")
    v = info.get("verification")
    if not v:
        return
    print(
        f"  {'format':<12} {'quant':<12} {'size MB':>8} {'x fp32':>7} {v['metric']:>14} {'change':>8} "
        f"{'b1 ms':>7} {'b64 ms':>7} {'speedup b64':>11}"
    )
    print(
        f"  {'pytorch':<12} {'fp32':<12} {'':>8} {1.0:>7.2f} {v['metric_fp32']:>14.4f} {'':>8} "
        f"{v['latency_ms_b1_fp32']:>7.3f} {v['latency_ms_b64_fp32']:>7.3f} {1.0:>11.2f}"
    )
    print(
        f"  {info['format']:<12} {info['quantize']:<12} {info['file_bytes'] / 1e6:>8.2f} "
        f"{v['size_ratio_to_fp32']:>7.2f} {v['metric_export']:>14.4f} {v['metric_change']:>+8.4f} "
        f"{v['latency_ms_b1']:>7.3f} {v['latency_ms_b64']:>7.3f} {v['speedup_b64']:>11.2f}"
    )
    if not v["latency_trusted"]:
        spread = max(v["speedup_spread_b1"], v["speedup_spread_b64"])
        print(
            f"  warning: the speedups varied by {100 * spread:.0f}% between timing rounds ({v['threads']} threads): "
            "another process is busy on this CPU; rerun on a quiet machine before trusting them"
        )
    print(f"  outputs vs fp32: max abs diff {v['max_abs_diff']:.3g}, class agreement {v['class_agreement']:.4f}")
    if info.get("lora"):
        lora = info["lora"]["merged_vs_adapted"]
        print(
            f"  LoRA merged vs adapted: max abs diff {lora['max_abs_diff']:.3g}, "
            f"class agreement {lora['class_agreement']:.4f}"
        )
