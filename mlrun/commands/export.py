"""`mlrun export RUN_DIR [--format F] [--quantize Q] [--checkpoint C] [--out DIR] [--no-verify] [--json]`.

Writes runs/<name>/export/<format>-<quant>/ with the model file, config.yaml, preprocessing.json
(when the data has fitted preprocessing) and export.json (inputs, outputs, how to load, figures),
then loads the file with its own runtime and compares it with the fp32 PyTorch model.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlrun.errors import UsageError, did_you_mean
from mlrun.export.artifact import quantization_drawbacks
from mlrun.jsonout import print_json


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
    from mlrun.export.formats import EXPORT_FORMATS, FORMATS
    from mlrun.export.quantize import QUANTIZATIONS, deployed_quantization

    if quantize is None:  # a compress stage trained for int8 (qat, and every stage after it) exports int8
        quantize = deployed_quantization(run_dir)

    for option, value, allowed in (("--format", fmt, FORMATS), ("--quantize", quantize, QUANTIZATIONS)):
        if value not in allowed:
            raise UsageError(
                f"{option}: unknown '{value}'.{did_you_mean(value, allowed)} Choose: {', '.join(allowed)}."
            )
    EXPORT_FORMATS[fmt].check(quantize)  # a pair the format cannot run (onnx with bf16)
    if calibration_batches < 1:
        raise UsageError("--calibration-batches must be at least 1")

    from mlrun.export.artifact import export_folder_name, export_trained
    from mlrun.techniques.lora import has_adapters, merge_adapters

    if out is not None:
        check_out(out)
    trained = load_for_export(run_dir, checkpoint, verify, quantize)
    folder = out or run_dir / "export" / export_folder_name(fmt, quantize, checkpoint, trained.weights)
    merge = merge_adapters if has_adapters(trained.parts.model) else None  # LoRA: adapters folded in for export
    info = export_trained(
        trained, folder, fmt=fmt, quantize=quantize, calibration_batches=calibration_batches, verify=verify, merge=merge
    )
    for drawback in quantization_drawbacks(info):
        print(f"mlrun: warning: {drawback}", file=sys.stderr)
    from mlrun.tracking.mlflow_run import log_export

    if logged := log_export(run_dir, folder):  # the run was tracked to MLflow: the model joins its run
        info["mlflow_artifacts"] = logged
    if json_output:
        print_json(info)
    else:
        print_report(info, folder)


def load_for_export(run_dir: Path, checkpoint: str, verify: bool, quantize: str):
    """The trained run; its data only where export uses it: verification scores on the validation split and
    int8-static calibrates on training batches; anything else traces on the inputs the run recorded."""
    from mlrun.engine.example_inputs import EXAMPLE_INPUTS
    from mlrun.engine.restore import load_trained
    from mlrun.errors import DataUnavailable

    needs_data = verify or quantize == "int8-static"
    try:
        return load_trained(run_dir, checkpoint, needs_data=needs_data)
    except DataUnavailable as exc:
        if not (run_dir / EXAMPLE_INPUTS).is_file():  # trained before the record existed: only its data says
            raise UsageError(
                f"the data of run '{run_dir}' is missing or unreadable: {exc} This run has no {EXAMPLE_INPUTS} "
                "(trained by an older mlrun), so export builds its data for the model's inputs even with "
                "--no-verify: restore the data where config.yaml names it"
            ) from None
        if quantize == "int8-static":
            use, instead = "--quantize int8-static calibrates on its training batches", "--quantize int8"
        else:
            use, instead = "verification scores the exported model on its validation split", "--no-verify"
        raise UsageError(
            f"the data of run '{run_dir}' is missing or unreadable: {exc} Export needs it only because {use}: "
            f"restore the data, or pass {instead} to export without it (the model is traced on the inputs the "
            f"run recorded in {EXAMPLE_INPUTS})"
        ) from None


def print_report(info: dict, folder: Path) -> None:
    print(f"mlrun: exported {info['format']} ({info['quantize']}) to {folder / info['file']}")
    if info.get("mlflow_artifacts"):
        print(f"  logged to the run's MLflow run: {info['mlflow_artifacts']}")
    for note in info["notes"]:
        print(f"  note: {note}")
    v = info.get("verification")
    if not v:
        return
    from mlrun.tracking.figures import format_bytes
    from mlrun.tracking.figures import format_figure as fig

    change = f"{'+' if v['metric_change'] >= 0 else ''}{fig(v['metric_change'])}"
    print(
        f"  {'format':<12} {'quant':<12} {'size':>9} {'x fp32':>7} {v['metric']:>14} {'change':>9} "
        f"{'b1 ms':>9} {'b64 ms':>9} {'speedup b64':>11}"
    )
    print(
        f"  {'pytorch':<12} {'fp32':<12} {'':>9} {fig(1.0):>7} {fig(v['metric_fp32']):>14} {'':>9} "
        f"{fig(v['latency_ms_b1_fp32']):>9} {fig(v['latency_ms_b64_fp32']):>9} {fig(1.0):>11}"
    )
    print(
        f"  {info['format']:<12} {info['quantize']:<12} {format_bytes(info['file_bytes']):>9} "
        f"{fig(v['size_ratio_to_fp32']):>7} {fig(v['metric_export']):>14} {change:>9} "
        f"{fig(v['latency_ms_b1']):>9} {fig(v['latency_ms_b64']):>9} {fig(v['speedup_b64']):>11}"
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
