"""Weight-only precision changes and int8 linear layers for inference.

int8 uses one portable module instead of torch.ao's packed parameters (deprecated, and rejected by
torch.export): weights are plain int8 tensors with a per-output-channel scale, activations are
quantized per row at run time (`int8`) or with a scale calibrated on training batches
(`int8-static`), and the product runs in `torch._int_mm`, about 2x faster than fp32 on x86 CPUs.
Because everything is a plain tensor and a core op, the same module saves to safetensors, exports
with torch.export and traces to TorchScript.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mlrun.errors import UsageError

QUANTIZATIONS = ("none", "int8", "int8-static", "fp16", "bf16")


class Int8Linear(nn.Module):
    """y = (x_int8 @ W_int8^T) * x_scale * w_scale + b, with symmetric int8 on both sides."""

    def __init__(self, in_features: int, out_features: int, bias: bool, static: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(()) if static else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, static: bool) -> Int8Linear:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, static)
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # per output channel
        module.weight.copy_(torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach().float())
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()  # (N, in)
        if self.input_scale is not None:
            scale = self.input_scale
        else:
            scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # per row, at run time
        quantized = torch.round(rows / scale).clamp(-127, 127).to(torch.int8)
        out = torch._int_mm(quantized, self.weight.t()).float() * (scale * self.weight_scale)  # (N, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def linear_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every nn.Linear."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]


def matrices_left_in_fp32(model: nn.Module) -> dict[str, int]:
    """Layers with a weight matrix int8 does not quantize (only nn.Linear is, linear_layers), by type: e.g.
    transformers' GPT-2 Conv1D, where every block's matrices would stay fp32. Embeddings are left out on purpose."""
    kept: dict[str, int] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 2 and not isinstance(module, nn.Linear | nn.Embedding):
            kept[type(module).__name__] = kept.get(type(module).__name__, 0) + 1
    return kept


def left_in_fp32(kept: dict[str, int]) -> str:
    """matrices_left_in_fp32's layers as one line for warnings and notes."""
    return f"{sum(kept.values())} weight layers ({', '.join(sorted(kept))}) are not nn.Linear and stay fp32"


def to_int8(model: nn.Module, static: bool, calibration: list[tuple[torch.Tensor, ...]] | None = None) -> int:
    """Replace every nn.Linear by Int8Linear in place; returns how many were replaced.

    With `static`, each layer's input scale is the largest absolute input seen on `calibration`;
    without calibration the scales are placeholders to be loaded from a saved int8-static model.
    """
    layers = linear_layers(model)
    if static and calibration is not None and layers:
        _calibrate(model, [layer for _, _, layer in layers], calibration)
    for parent, name, layer in layers:
        replacement = Int8Linear.from_linear(layer, static)
        if hasattr(layer, "calibrated_absmax"):
            replacement.input_scale.copy_(layer.calibrated_absmax.clamp(min=1e-12) / 127.0)
        setattr(parent, name, replacement)
    return len(layers)


@torch.no_grad()
def _calibrate(model: nn.Module, layers: list[nn.Linear], batches: list[tuple[torch.Tensor, ...]]) -> None:
    if not batches:
        raise ValueError("int8-static needs calibration batches")
    for layer in layers:
        layer.calibrated_absmax = torch.zeros(())

    def record(layer, inputs, output):
        layer.calibrated_absmax = torch.maximum(layer.calibrated_absmax, inputs[0].detach().abs().max().float())

    hooks = [layer.register_forward_hook(record) for layer in layers]
    try:
        for batch in batches:  # positional inputs of an InferenceModule
            model(*batch)
    finally:
        for hook in hooks:
            hook.remove()


class CastInputs(nn.Module):
    """Runs `model` in fp16/bf16 but keeps an fp32 interface: float inputs cast in, outputs cast out."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*(x.to(self.dtype) if x.is_floating_point() else x for x in inputs)).float()


def apply_quantization(
    model: nn.Module, quantize: str, calibration: list[tuple[torch.Tensor, ...]] | None
) -> tuple[nn.Module, int]:
    """The model converted for `quantize` and the number of layers it changed (0: nothing to quantize)."""
    if quantize == "none":
        return model, 0
    if quantize in ("fp16", "bf16"):
        count = sum(1 for p in model.parameters() if p.is_floating_point())
        return CastInputs(model, torch.float16 if quantize == "fp16" else torch.bfloat16), count
    return model, to_int8(model, static=quantize == "int8-static", calibration=calibration)


def deployed_quantization(run_dir: Path) -> str:
    """How a folder's weights are deployed: a compress stage's stage.json says int8 once a qat stage ran
    (that stage and every later one); none for runs and other stages. eval, predict and export follow it."""
    stage = run_dir / "stage.json"
    if not stage.is_file():
        return "none"
    try:
        return json.loads(stage.read_text()).get("quantize") or "none"
    except (ValueError, AttributeError):
        raise UsageError(f"'{stage}' is damaged (not a JSON record); rerun mlrun compress to write it again") from None
