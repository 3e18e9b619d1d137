"""Writing a model in an inference format, and loading it back with that format's own runtime.

    safetensors   weights + resolved config, reloaded by mlrun (int8 layers stay int8)
    pt2           torch.export ExportedProgram (torch.export.save), batch dimension dynamic
    onnx          torch.onnx.export (dynamo exporter, dynamic batch); int8 / int8-static / fp16
                  are applied by ONNX Runtime's own tools to the fp32 graph, because quantized
                  PyTorch graphs do not export to ONNX reliably
    torchscript   torch.jit.trace, legacy: TorchScript is deprecated in favour of torch.export

Models are written as `InferenceModule`s (mlrun.export.signature): positional input tensors named
after the data's inputs, logits out. Every loader returns `run(*inputs: Tensor) -> Tensor` on CPU.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mlrun.errors import UsageError

FORMATS = ("safetensors", "pt2", "onnx", "torchscript")
FILE_NAMES = {"safetensors": "model.safetensors", "pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.ts"}
Runner = Callable[..., torch.Tensor]


def write(fmt: str, model: nn.Module, example: tuple[torch.Tensor, ...], names: tuple[str, ...], folder: Path) -> Path:
    """Write `model` (already quantized for torch formats) to folder/<file>; returns the path.

    `example`: one batch of positional inputs (batch >= 2, so the batch dimension stays dynamic).
    """
    path = folder / FILE_NAMES[fmt]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporters warn at length about internals users cannot change
            _WRITERS[fmt](model, example, names, path)
    except UsageError:
        raise
    except Exception as exc:  # an exporter failing on an operator of this model
        raise UsageError(_export_failure(fmt, exc)) from None
    return path


def _write_safetensors(model: nn.Module, example, names, path: Path) -> None:
    from mlrun.models.weights_file import save_weights

    save_weights(model, path)


def _dynamic_batch(example: tuple[torch.Tensor, ...]):
    batch = torch.export.Dim("batch", min=1, max=65536)  # one dimension shared by every input
    return (tuple({0: batch} for _ in example),)  # InferenceModule.forward(*inputs): one varargs parameter


def _write_pt2(model: nn.Module, example, names, path: Path) -> None:
    program = torch.export.export(model, example, dynamic_shapes=_dynamic_batch(example))
    torch.export.save(program, str(path))


def _write_onnx(model: nn.Module, example, names, path: Path) -> None:
    import onnx

    program = torch.onnx.export(
        model,
        example,
        dynamo=True,
        dynamic_shapes=_dynamic_batch(example),
        input_names=list(names),
        output_names=["outputs"],
        verbose=False,
    )
    program.save(str(path))
    graph = onnx.load(str(path))
    # The exporter's intermediate shape annotations can disagree with ONNX shape inference, which
    # ONNX Runtime's quantizer runs; the graph is valid without them.
    del graph.graph.value_info[:]
    onnx.save(graph, str(path))


def _write_torchscript(model: nn.Module, example, names, path: Path) -> None:
    torch.jit.save(torch.jit.trace(model, example), str(path))


_WRITERS = {
    "safetensors": _write_safetensors,
    "pt2": _write_pt2,
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
}


def _export_failure(fmt: str, exc: Exception) -> str:
    text = str(exc)
    ops = sorted(set(re.findall(r"aten[.:]{1,2}\w+", text)))
    where = f" at operator {', '.join(ops[:3])}" if ops else ""
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    others = [f for f in FORMATS if f != fmt]
    return (
        f"--format {fmt}: the exporter failed{where}: {first}. safetensors always works; "
        f"try --format {' or '.join(others)}."
    )


# --- ONNX Runtime quantization ------------------------------------------------------------------


def quantize_onnx(path: Path, quantize: str, calibration: list[tuple[torch.Tensor, ...]], names) -> Path:
    """Apply ONNX Runtime's int8 / int8-static / fp16 conversion to an fp32 ONNX file, in place."""
    if quantize == "none":
        return path
    if quantize == "bf16":
        raise UsageError(
            "--format onnx --quantize bf16: ONNX Runtime's CPU provider has no bf16 kernels; "
            "use --quantize fp16 or int8, or --format pt2 for bf16"
        )
    source = path.with_name("model.fp32.onnx")
    path.rename(source)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Linear layers only, as the torch formats and QAT do: ONNX Runtime's ConvInteger runs slower
        # than fp32 Conv on CPU (a digits CNN measured 0.15x), so convolutions stay fp32.
        quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    elif quantize == "int8-static":
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        quantize_static(
            str(source),
            str(path),
            _Calibration(calibration, names),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    else:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(path))
    source.unlink()
    return path


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over calibration batches."""

    def __init__(self, batches: list[tuple[torch.Tensor, ...]], names):
        self.batches, self.names = iter(batches), names

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {name: t.numpy() for name, t in zip(self.names, batch)}


# --- loading back -------------------------------------------------------------------------------


def load(fmt: str, path: Path, reload: Callable[[], nn.Module] | None = None) -> Runner:
    """`run(*inputs) -> outputs` from the file, through the format's own runtime (mlrun's for safetensors)."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the torch side
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *inputs: torch.from_numpy(
            session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})[0]
        )
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()
    elif fmt == "torchscript":
        module = torch.jit.load(str(path))
    else:
        module = reload()

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(*inputs)

    return run
