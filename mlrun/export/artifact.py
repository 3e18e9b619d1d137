"""An export folder from a trained run: the model file, what it needs beside it, export.json, verification.

    runs/<name>/export/<format>-<quant>[-best|-<checkpoint>]/
        model.<ext>          the model in its format (`mlrun.export.formats`), quantized as asked
        config.yaml          the run's resolved config
        preprocessing.json   the data's fitted preprocessing, when it has some (preprocessing.pkl: the
                             fitted tabular transform; tokenizer/: a transformers tokenizer)
        export.json          inputs, outputs, how to load, notes and the verification's figures

`export_trained` is `mlrun export` once the command has checked its options and loaded the run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the module imports torch only when an export runs: `mlrun export --help` stays light
    from mlrun.export.formats import ExportFormat


def export_folder_name(fmt: str, quantize: str, checkpoint: str, weights: Path) -> str:
    """`<format>-<quant>` for the final weights; `-best` or `-<checkpoint>` otherwise, so exports never collide.

    A checkpoint is named by the weights it resolved to (`weights`), not as typed: `step-46`, `step-00000046`,
    `latest` and the folder's path are one checkpoint, so one export folder (`-step-00000046`)."""
    in_run = (weights.parent / "config.yaml").is_file()  # the run's own final or best weights, given by path
    if checkpoint == "final" or in_run and weights.name == "model.safetensors":
        return f"{fmt}-{quantize}"
    if checkpoint == "best" or in_run and weights.name == "best.safetensors":
        return f"{fmt}-{quantize}-best"
    if weights.is_dir():  # an FSDP checkpoint: its folder of shards
        name = weights.name
    elif weights.name == "model.safetensors" and weights.parent.name.startswith("step-"):  # checkpoints/step-N/
        name = weights.parent.name
    else:  # a weights file of its own
        name = weights.stem
    return f"{fmt}-{quantize}-{name}"


def export_trained(
    trained,
    folder: Path,
    *,
    fmt: str,
    quantize: str,
    calibration_batches: int,
    verify: bool,
    merge: Callable | None = None,
) -> dict:
    """Write the run's model into `folder` (rebuilt) and, with `verify`, check it against the fp32 model.

    Returns export.json's fields, also written to folder/export.json. `merge(model) -> layers` folds
    LoRA adapters into plain layers in place (mlrun.techniques.lora.merge_adapters, handed in by the
    command: export does not import techniques); None when the model has no adapters.
    """
    from mlrun.export.formats import EXPORT_FORMATS

    # Written under a hidden name and renamed when verified: a Ctrl-C, a kill or a failure midway never leaves
    # a folder that looks like an export (a user trial found an empty export/onnx-none/ after Ctrl-C).
    folder = folder.absolute()  # `--out .` has no name of its own to derive the hidden one from
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a killed export left
    partial.mkdir(parents=True)
    try:
        info = write_and_verify(trained, EXPORT_FORMATS[fmt], partial, quantize, calibration_batches, verify, merge)
    except BaseException:  # KeyboardInterrupt and SIGTERM's Terminated too
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)  # an earlier export of the same kind: export's own, rebuilt now
    partial.rename(folder)
    return info


def write_and_verify(
    trained, spec: ExportFormat, folder: Path, quantize: str, calibration_batches: int, verify: bool, merge
) -> dict:
    """export_trained's work, in the folder it renames when this returns."""
    from mlrun.export.verify import verify_artifact

    merged, lora = merged_for_export(trained, merge)
    info = write_artifact(trained, spec, quantize, folder, calibration_batches, model=merged)
    if lora:
        info["lora"] = lora
        info["notes"].append(f"LoRA adapters merged in fp32 into {lora['merged_layers']} layers")
    (folder / "export.json").write_text(json.dumps(info, indent=2) + "\n")  # the reload below reads it
    if verify:
        info["verification"] = verify_artifact(trained, spec, folder, info)
        info["notes"].extend(quantization_drawbacks(info))
        (folder / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def quantization_drawbacks(info: dict) -> list[str]:
    """What makes a quantized export worse than the fp32 model it replaces (slower, larger), one line each."""
    return [drawback for check in (slower_than_fp32, larger_than_fp32) if (drawback := check(info))]


def larger_than_fp32(info: dict) -> str | None:
    """A quantized file larger than the fp32 weights: on a small model the quantization's scales, zero points
    and quantize/dequantize nodes outweigh the bytes int8 saves (a user trial: ONNX int8 at 2.6x)."""
    v = info.get("verification") or {}
    if info["quantize"] == "none" or not v or v["size_ratio_to_fp32"] <= 1.0:
        return None
    fp32_bytes = round(info["file_bytes"] / v["size_ratio_to_fp32"])
    return (
        f"{info['format']} {info['quantize']} is larger than the model's fp32 weights "
        f"({info['file_bytes']} bytes against {fp32_bytes}, {v['size_ratio_to_fp32']:.2f}x): "
        "the model is too small for quantization to save space; --quantize none where size matters."
    )


def slower_than_fp32(info: dict) -> str | None:
    """A quantized export that runs slower than fp32 PyTorch defeats its purpose: say so, with the figures."""
    v = info.get("verification") or {}
    if info["quantize"] == "none" or not v:
        return None
    slower = [f"{v[f'speedup_{b}']:.4g}x at batch {b[1:]}" for b in ("b1", "b64") if v[f"speedup_{b}"] < 1.0]
    if not slower:
        return None
    return (
        f"{info['format']} {info['quantize']} runs slower than fp32 PyTorch on this machine "
        f"({' and '.join(slower)} its speed); try another format "
        f"(e.g. --format {'pt2' if info['format'] == 'onnx' else 'onnx'}) or --quantize none where latency matters."
    )


def merged_for_export(trained, merge: Callable | None):
    """(the model to write, LoRA merge figures or None): adapters folded into plain layers in fp32.

    The adapted model stays as it is: verification compares the exported (merged) file with it.
    """
    import torch

    adapted = trained.parts.model
    if merge is None:
        return adapted, None
    from mlrun.export.signature import InferenceModule
    from mlrun.export.verify import agreement, batches

    meta = trained.parts.bundle.meta
    merged = copy.deepcopy(adapted)
    count = merge(merged)
    merged.eval()
    inputs = next(batches(trained.parts.bundle.val, 256, meta))[0]
    with torch.inference_mode():
        figures = agreement(InferenceModule(adapted, meta), InferenceModule(merged, meta), inputs)
    return merged, {"merged_layers": count, "merged_vs_adapted": figures}


def write_artifact(
    trained, spec: ExportFormat, quantize: str, folder: Path, calibration_batches: int, model=None
) -> dict:
    """Write `model` (default the run's model) in `spec`'s format; returns export.json's fields."""
    import torch

    from mlrun.export.quantize import apply_quantization, left_in_fp32, linear_layers, matrices_left_in_fp32
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
    if spec.quantize_file is not None:  # the fp32 file written, then converted by the format's own tools
        # They quantize the linear layers (ONNX Runtime: MatMul/Gemm); fp16 converts every float tensor.
        changed = len(linear_layers(model)) if quantize.startswith("int8") else 1
        written = spec.write(copy.deepcopy(model), example, names, folder)
        path = spec.quantize_file(written, quantize, calibration or [], names)
        if quantize != "none":
            notes.append(spec.quantize_note.format(quantize=quantize))
    else:
        converted, changed = apply_quantization(copy.deepcopy(model), quantize, calibration)
        path = spec.write(converted, example, names, folder)
        if quantize.startswith("int8"):
            notes.append("int8 linear layers: per-channel int8 weights, torch._int_mm")
    if spec.note:
        notes.append(spec.note)
    if quantize != "none" and changed == 0:
        print(
            f"mlrun: warning: --quantize {quantize}: the model has no layer to quantize; the file is unchanged",
            file=sys.stderr,
        )
        notes.append("nothing to quantize")
    elif quantize.startswith("int8") and (kept := matrices_left_in_fp32(model)):
        print(f"mlrun: warning: --quantize {quantize}: {left_in_fp32(kept)}", file=sys.stderr)
        notes.append(left_in_fp32(kept))
    copy_run_files(trained, folder, notes)
    return {
        "format": spec.name,
        "quantize": quantize,
        "file": path.name,
        "file_bytes": path.stat().st_size,
        "source_weights": str(trained.weights),
        # ONNX takes a feed by the recorded input names ({'input_ids': input_ids, 'attention_mask': ...}).
        "how_to_load": spec.how_to_load.replace("{'inputs': x}", "{" + ", ".join(f"'{n}': {n}" for n in names) + "}"),
        "inputs": [
            {"name": name, "shape": ["batch", *t.shape[1:]], "dtype": "int64" if t.dtype == torch.long else "float32"}
            for name, t in zip(names, example)
        ],
        "outputs": [{"name": "outputs", "dtype": "float32"}],
        "preprocessing": "preprocessing.json" if parts.bundle.preprocessing else None,
        "data_meta": dataclasses.asdict(meta),
        "notes": notes,
    }


def copy_run_files(trained, folder: Path, notes: list[str]) -> None:
    """What a user needs beside the model file: the config, the fitted preprocessing, the tokenizer."""
    bundle = trained.parts.bundle
    shutil.copy(trained.run_dir / "config.yaml", folder / "config.yaml")
    preprocessing = copy.deepcopy(bundle.preprocessing or {})
    tokenizer = preprocessing.get("tokenizer", {})
    if tokenizer.get("kind") in ("transformers", "file"):  # the model's own tokenizer travels with it
        source = Path(tokenizer["path"])
        if source.is_dir():  # a transformers tokenizer folder (AutoTokenizer.from_pretrained)
            shutil.copytree(source, folder / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
            tokenizer["path"] = "tokenizer"
        else:  # a tokenizers file (tokenizer.json)
            (folder / "tokenizer").mkdir(exist_ok=True)
            shutil.copy(source, folder / "tokenizer" / source.name)
            tokenizer["path"] = f"tokenizer/{source.name}"
        notes.append("tokenizer/: the tokenizer the model was trained with (mlrun predict reads it from here)")
    if preprocessing:  # paths in it relative to this folder, which can then move
        (folder / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2) + "\n")
    fitted = trained.run_dir / "preprocessing.pkl"  # the transform fitted during training (tabular data)
    if fitted.exists():
        shutil.copy(fitted, folder / fitted.name)
