"""ONNX Runtime's own int8 / int8-static / fp16 conversion of an fp32 ONNX file (`--format onnx --quantize`).

Quantized PyTorch graphs do not export to ONNX reliably, so the ONNX format writes the fp32 graph and
lets ONNX Runtime's tools convert it; the torch formats convert the module before writing instead.
"""

from __future__ import annotations

from pathlib import Path

import torch


def quantize_onnx(path: Path, quantize: str, calibration: list[tuple[torch.Tensor, ...]], names) -> Path:
    """Apply ONNX Runtime's int8 / int8-static / fp16 conversion to an fp32 ONNX file, in place.

    bf16 never reaches here: the ONNX format's record refuses it (no CPU kernels).
    """
    if quantize == "none":
        return path
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
