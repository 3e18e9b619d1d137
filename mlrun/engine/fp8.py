"""`train.precision: fp8`: torchao's float8 training (Linear matmuls in float8, the rest under bf16 autocast).

Float8 matmuls need tensor cores of compute capability 8.9 or newer (Ada: L4, L40, RTX 40xx;
Hopper: H100, H200; Blackwell: B200); elsewhere the run stops before building anything. Each
eligible nn.Linear is swapped for torchao's Float8Linear, which keeps the same Parameter objects,
so the optimizer, checkpoints and model.safetensors see the weights under their usual names.

    mlrun train configs/charlm_gpt.yaml train.precision=fp8 train.compile=true   # compile fuses the casts
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from mlrun.errors import UsageError
from mlrun.models.addressing import head_prefix

FP8_CAPABILITY = (8, 9)
FP8_GPUS = "compute capability 8.9 or newer: Ada (L4, L40, RTX 40xx), Hopper (H100, H200), Blackwell (B200)"


def check_fp8_device() -> None:
    """Exit 2 unless training runs on a CUDA GPU with float8 tensor cores."""
    if not torch.cuda.is_available():
        raise UsageError(
            f"train.precision: fp8 needs an NVIDIA GPU of {FP8_GPUS}; this machine has no CUDA GPU. "
            "Use train.precision: bf16"
        )
    capability = torch.cuda.get_device_capability()
    if capability < FP8_CAPABILITY:
        name = torch.cuda.get_device_name()
        raise UsageError(
            f"train.precision: fp8 needs an NVIDIA GPU of {FP8_GPUS}; {name} has compute capability "
            f"{capability[0]}.{capability[1]}. Use train.precision: bf16"
        )


def convert_to_fp8(model: nn.Module) -> int:
    """Swap eligible Linear layers for Float8Linear in place; the number swapped.

    Left in high precision: the output layer (its logits feed the loss directly; torchtitan keeps it
    too) and layers whose dimensions are not multiples of 16 (float8 matmul kernels need them).
    """
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise UsageError("train.precision: fp8 needs torchao: pip install 'mlrun[lowbit]'") from None
    try:
        head = head_prefix(model)
    except UsageError:
        head = None

    def eligible(module: nn.Module, name: str) -> bool:
        if not isinstance(module, nn.Linear):
            return True  # containers: convert_to_float8_training recurses into what passes
        if head is not None and f"{name}.".startswith(head):
            return False
        return module.in_features % 16 == 0 and module.out_features % 16 == 0

    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    convert_to_float8_training(model, module_filter_fn=eligible)
    swapped = sum(type(m).__name__ == "Float8Linear" for m in model.modules())
    if swapped == 0:
        raise UsageError(
            f"train.precision: fp8 found no Linear layer to train in float8 (of {linears}, the output layer stays "
            "in bf16 and the others need in and out features that are multiples of 16); use bf16"
        )
    print(f"mlrun: fp8: {swapped} of {linears} Linear layers compute in float8", file=sys.stderr, flush=True)
    return swapped
