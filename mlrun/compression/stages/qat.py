"""`qat`: quantization-aware fine-tuning for int8 (torchao QATConfig prepare, fine-tune, convert).

    compress:
      - {name: qat, finetune: {train.epochs: 3, optimizer.lr: 1.0e-4}}

The fine-tuning runs with the `qat` technique (fake int8 weights per channel and inputs per row,
the numerics of `mlrun export --quantize int8`); afterwards the fake-quantized layers are converted
back to plain Linear layers holding the trained weights. The stage and every later one are measured
as int8, and its report holds post-training int8 of the same input for comparison (`ptq_int8`).
Export it with `mlrun export runs/<name>/compress/N-qat --quantize int8 --format onnx`.
"""

from __future__ import annotations

import sys

from torch import nn

from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.export.quantize import left_in_fp32, matrices_left_in_fp32
from mlrun.models.addressing import weight_layers
from mlrun.registry import stages
from mlrun.techniques.qat import convert


@stages.register("qat", quantize="int8")
def qat(
    model: nn.Module,
    context: StageContext,
    /,
    *,
    activations: bool = True,
) -> Stage:
    """Fine-tune with fake int8 quantization of every Linear layer, then convert for int8 export.

    Args:
        activations: fake-quantize layer inputs per row too, as the dynamic int8 export does.
    """
    if not any(isinstance(layer, nn.Linear) for _, layer in weight_layers(model, [], True)):
        raise UsageError("the model has no Linear layer for int8 (mlrun's int8 quantizes Linear layers)")
    if context.finetune_steps == 0:
        raise UsageError("qat learns the int8 grid while fine-tuning: give it finetune: {train.epochs: N}")
    if kept := matrices_left_in_fp32(model):  # e.g. a transformers GPT-2's Conv1D blocks
        print(f"mlrun: qat: {left_in_fp32(kept)}", file=sys.stderr)
    fp32, ptq = context.evaluate(model, None), context.evaluate(model, "int8")
    return Stage(
        model,
        techniques=[{"name": "qat", "activations": activations}],
        finish=convert,
        report={"input_fp32": fp32, "ptq_int8": ptq, "left_fp32": kept},
    )
