"""The inference formats of `mlrun export`: one `ExportFormat` record each, in `EXPORT_FORMATS`.

    safetensors   weights + resolved config, reloaded by mlrun (int8 layers stay int8)
    pt2           torch.export ExportedProgram (torch.export.save), batch dimension dynamic
    onnx          torch.onnx.export (dynamo exporter, dynamic batch); int8 / int8-static / fp16
                  are applied by ONNX Runtime's own tools to the fp32 graph, because quantized
                  PyTorch graphs do not export to ONNX reliably
    torchscript   torch.jit.trace, legacy: TorchScript is deprecated in favour of torch.export

A record holds everything mlrun knows about its format (file name, writer, loader, the line that
says how to load it, the quantizations it takes); a new format is a new record, read by the export
command, the artifact writer, verification and `mlrun predict`. Models are written as
`InferenceModule`s (mlrun.export.signature): positional input tensors named after the data's inputs,
logits out. Every loader returns `run(*inputs: Tensor) -> Tensor` on CPU.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mlrun.errors import UsageError
from mlrun.export.quantize import QUANTIZATIONS
from mlrun.export.signature import Runner

Writer = Callable[[nn.Module, tuple[torch.Tensor, ...], tuple[str, ...], Path], None]  # (model, example, names, path)
FileQuantizer = Callable[[Path, str, list[tuple[torch.Tensor, ...]], tuple[str, ...]], Path]


@dataclass(frozen=True)
class ExportFormat:
    name: str  # --format
    file_name: str  # the model file inside the export folder
    writer: Writer  # writes the model (quantized already unless `quantize_file`) to a path
    loader: Callable[[Path], Runner]  # the file back through the format's own runtime (mlrun's for safetensors)
    how_to_load: str  # export.json's how_to_load: a line a user can paste
    quantizations: tuple[str, ...] = QUANTIZATIONS  # the --quantize values this format takes
    refusal: str = ""  # why the other --quantize values are refused, and what to use instead
    # Converts the written fp32 file for --quantize with the format's own tools; None: the torch module
    # is converted before it is written. `quantize_note` ({quantize} filled in) then goes to export.json.
    quantize_file: FileQuantizer | None = None
    quantize_note: str = ""
    note: str | None = None  # said in every export of this format (export.json's notes)

    def check(self, quantize: str) -> None:
        if quantize not in self.quantizations:
            raise UsageError(f"--format {self.name} --quantize {quantize}: {self.refusal}")

    def write(self, model: nn.Module, example: tuple[torch.Tensor, ...], names: tuple[str, ...], folder: Path) -> Path:
        """Write `model` to folder/<file_name>; returns the path.

        `example`: one batch of positional inputs (batch >= 2, so the batch dimension stays dynamic).
        """
        path = folder / self.file_name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # exporters warn at length about internals users cannot change
                self.writer(model, example, names, path)
        except UsageError:
            raise
        except Exception as exc:  # an exporter failing on an operator of this model
            raise UsageError(_export_failure(self.name, exc)) from None
        return path

    def load(self, path: Path) -> Runner:
        """`run(*inputs) -> outputs` from the file, through the format's own runtime."""
        return self.loader(path)


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


# --- writing ------------------------------------------------------------------------------------


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


def _quantize_onnx(path: Path, quantize: str, calibration, names) -> Path:
    from mlrun.export.onnx_quantize import quantize_onnx  # onnxruntime: imported for ONNX exports only

    return quantize_onnx(path, quantize, calibration, names)


# --- loading back -------------------------------------------------------------------------------


def _module_runner(module: nn.Module) -> Runner:
    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(*inputs)

    return run


def _load_safetensors(path: Path) -> Runner:
    from mlrun.export.reload import load_exported_model

    return _module_runner(load_exported_model(path.parent))  # the folder's export.json and config.yaml


def _load_pt2(path: Path) -> Runner:
    return _module_runner(torch.export.load(str(path)).module())


def _load_onnx(path: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the torch side
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *inputs: torch.from_numpy(session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})[0])


def _load_torchscript(path: Path) -> Runner:
    return _module_runner(torch.jit.load(str(path)))


EXPORT_FORMATS = {
    spec.name: spec
    for spec in (
        ExportFormat(
            "safetensors",
            "model.safetensors",
            _write_safetensors,
            _load_safetensors,
            "from mlrun.export.reload import load_exported_model; model = load_exported_model(folder)",
        ),
        ExportFormat(
            "pt2",
            "model.pt2",
            _write_pt2,
            _load_pt2,
            "model = torch.export.load('model.pt2').module()",
        ),
        ExportFormat(
            "onnx",
            "model.onnx",
            _write_onnx,
            _load_onnx,
            "session = onnxruntime.InferenceSession('model.onnx'); session.run(None, {'inputs': x})",
            quantizations=tuple(q for q in QUANTIZATIONS if q != "bf16"),
            refusal=(
                "ONNX Runtime's CPU provider has no bf16 kernels; use --quantize fp16 or int8, or --format pt2 for bf16"
            ),
            quantize_file=_quantize_onnx,
            quantize_note="{quantize} applied by ONNX Runtime to the fp32 ONNX graph",
        ),
        ExportFormat(
            "torchscript",
            "model.ts",
            _write_torchscript,
            _load_torchscript,
            "model = torch.jit.load('model.ts')",
            note="TorchScript is deprecated in PyTorch; prefer --format pt2",
        ),
    )
}
FORMATS = tuple(EXPORT_FORMATS)  # --format's choices, in the order they are offered
