"""Quantization-aware training: fake int8 quantization in the forward pass (torchao's QATConfig).

    techniques:
      - qat                         # every Linear, as `mlrun export --quantize int8` quantizes them

The prepare step of `torchao.quantization.quantize_(model, QATConfig(..., step="prepare"))` swaps each
selected nn.Linear for a FakeQuantizedLinear that rounds its weights to symmetric int8 per output
channel and its inputs to symmetric int8 per row (token) in the forward pass, with straight-through
gradients: the numerics of mlrun's Int8Linear, so the weights learn to live on the grid they are
deployed on. The swap happens when the technique is built, so a resumed run rebuilds the same
model; `convert` (the `qat` compress stage does it) swaps plain Linear layers back with the trained
weights, ready for `mlrun export --quantize int8`.
"""

from __future__ import annotations

import torch
from torch import nn

from mlrun.errors import UsageError
from mlrun.models.parts import weight_layers
from mlrun.notices import import_quietly, torchao_quiet
from mlrun.registry import techniques


def fake_quantize_config(activations: bool):
    """torchao's QATConfig prepare step matching mlrun's int8 export."""
    try:
        api = import_quietly("torchao.quantization.qat")
    except ImportError:
        raise UsageError("technique qat needs torchao: pip install 'mlrun[compress]'") from None
    IntxFakeQuantizeConfig, QATConfig = api.IntxFakeQuantizeConfig, api.QATConfig  # noqa: N806 - classes
    weights = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    # Inputs: asymmetric per row, the only per-token scheme torchao fake-quantizes (the export is symmetric).
    inputs = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False) if activations else None
    return QATConfig(activation_config=inputs, weight_config=weights, step="prepare")


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
    config = fake_quantize_config(activations)
    with torchao_quiet():  # the first swap imports torchao's prototype kernels
        from torchao.quantization import quantize_

        quantize_(model, config, filter_fn=lambda module, name: name in selected and isinstance(module, nn.Linear))
