"""Quantization-aware training: fake int8 quantization in the forward pass (torchao's QATConfig).

    techniques:
      - qat                         # every Linear, as `mlrun export --quantize int8` quantizes them

The prepare step of `torchao.quantization.quantize_(model, QATConfig(..., step="prepare"))` swaps each
selected nn.Linear for a FakeQuantizedLinear (same parameter names); its quantizers are then
replaced by a subclass that rounds exactly as mlrun's Int8Linear runs: weights symmetric int8 in
[-127, 127] per output channel, inputs the same per row (token), scales absmax / 127 computed at run
time, gradients straight through (the idea and its test are helper B's). The weights learn to live
on the grid they are deployed on. The swap happens when the technique is built, so a resumed run
rebuilds the same model; `convert` (the `qat` compress stage does it) swaps plain Linear layers back with the trained
weights, ready for `mlrun export --quantize int8`.
"""

from __future__ import annotations

import torch
from torch import nn

from mlrun.errors import UsageError
from mlrun.models.addressing import weight_layers
from mlrun.notices import torchao_quiet
from mlrun.registry import techniques

QMAX = 127  # Int8Linear's symmetric range: [-127, 127], scale = absmax / 127


def fake_int8(x: torch.Tensor) -> torch.Tensor:
    """x rounded to Int8Linear's grid along its last dimension (per row / output channel), gradient straight through."""
    scale = x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / QMAX
    rounded = torch.round(x / scale).clamp(-QMAX, QMAX) * scale
    return x + (rounded - x).detach()


def prepare(model: nn.Module, selected: set[str], activations: bool) -> None:
    """QATConfig's prepare step on the `selected` Linear layers, rounding on the deployed grid."""
    try:
        with torchao_quiet():  # the first swap also imports torchao's prototype kernels
            from torchao.quantization import quantize_
            from torchao.quantization.qat import (
                FakeQuantizedLinear,
                IntxFakeQuantizeConfig,
                IntxFakeQuantizer,
                QATConfig,
            )

            int8 = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
            config = QATConfig(activation_config=int8 if activations else None, weight_config=int8, step="prepare")
            quantize_(model, config, filter_fn=lambda module, name: name in selected and isinstance(module, nn.Linear))
    except ImportError:
        raise UsageError("technique qat needs torchao: pip install 'mlrun[compress]'") from None

    class DeployedGrid(IntxFakeQuantizer):
        """torchao's int8 fake quantizer (config, enable flag) rounding exactly as Int8Linear does: torchao's
        own symmetric int8 is [-128, 127] with absmax / 127.5, and it has no symmetric per-token inputs."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fake_int8(x) if self.enabled else x

    for module in model.modules():
        if isinstance(module, FakeQuantizedLinear):
            module.weight_fake_quantizer = DeployedGrid(module.weight_fake_quantizer.config)
            if module.activation_fake_quantizer is not None:
                module.activation_fake_quantizer = DeployedGrid(module.activation_fake_quantizer.config)


def convert(model: nn.Module) -> nn.Module:
    """Fake-quantized layers back to plain nn.Linear with their trained weights (in place)."""
    with torchao_quiet():
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

        quantize_(model, QATConfig(step="convert"))
    return model


@techniques.register("qat")
def qat(
    model: nn.Module,
    /,
    *,
    layers: list[str] = [],  # noqa: B006 - never mutated
    include_head: bool = True,
    activations: bool = True,
) -> None:
    """Fake int8 quantization of Linear layers during training (torchao QAT prepare).

    Args:
        layers: module names (globs) of the Linear layers to quantize; default all.
        include_head: quantize the output layer too (mlrun's int8 export quantizes every Linear).
        activations: also fake-quantize each layer's inputs per row, as the dynamic int8 export does.
    """
    selected = {name for name, layer in weight_layers(model, layers, include_head) if isinstance(layer, nn.Linear)}
    if not selected:
        raise UsageError("technique qat: the model has no Linear layer to quantize")
    prepare(model, selected, activations)
