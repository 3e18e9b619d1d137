"""`distill`: knowledge distillation (Hinton et al. 2015) from a trained teacher run.

    objective: {name: distill, teacher: runs/digits_wide_mlp, temperature: 4.0, alpha: 0.7}

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * loss(student, labels)

The teacher is rebuilt from its run (or compress stage) folder, frozen and kept in eval mode; it
runs under no_grad on the student's device, on exactly the batch the student sees: after the
loop's augmentation, so with mixup or noise both see the same mixed or noisy inputs (Beyer et al.
2022's "consistent" teaching; the hard term then uses the mixed labels). `teacher: [a, b, c]` is an
ensemble: the teachers' logits are averaged. T^2 keeps the soft term's gradients on the scale of the
hard term's as T changes. The student may be any architecture whose outputs have the teacher's
shape (same classes or vocabulary); for sequence outputs the KL is averaged over tokens.
Evaluation reports this loss as val/loss; metrics score the student's own predictions.

`hidden: w` adds DistilBERT's hidden-state loss, w * mean over student blocks of (1 - cosine) between
student block i's output and the (first) teacher's block floor(i * T / S), the blocks that
`init: teacher_layers` copies. It needs models that declare `blocks` and outputs of equal width
(a shallower student of the teacher's width). TinyBERT's learned projection for narrower students is
not built: it would be trainable state outside the model, which checkpoints and the optimizer do
not hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat
from torch.nn import functional as F

from mlrun.data.batch import TARGET_KEY, split_batch
from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.models.addressing import evenly_spaced_blocks
from mlrun.models.block_outputs import BlockTap, check_hidden_widths
from mlrun.models.outputs import call_model, logits_of
from mlrun.models.saved import load_saved_model
from mlrun.objectives.base import Objective, ObjectiveOutput
from mlrun.registry import objectives


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) on temperature-softened distributions, averaged over samples (tokens)."""
    classes = student.shape[-1]
    log_student = F.log_softmax(student.reshape(-1, classes).float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.reshape(-1, classes).float() / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


def ensemble_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """The teachers' logits averaged (one teacher: its own logits)."""
    return logits[0] if len(logits) == 1 else torch.stack(logits).float().mean(dim=0)


def hidden_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """DistilBERT's cosine loss: student block i against teacher block floor(i * T / S), averaged."""
    picked = [teacher[j] for j in evenly_spaced_blocks(len(student), len(teacher))]
    losses = [1.0 - F.cosine_similarity(s.float(), t.float(), dim=-1).mean() for s, t in zip(student, picked)]
    return torch.stack(losses).mean()


@objectives.register("distill")
def distill(
    loss_fn,
    meta: DataMeta,
    /,
    *,
    teacher: str | list[str],
    weights: str = "model.safetensors",
    temperature: PositiveFloat = 2.0,
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
    hidden: NonNegativeFloat = 0.0,
    target_key: str = TARGET_KEY,
) -> Objective:
    """Match a trained teacher's softened outputs (weight alpha) and the labels (weight 1 - alpha).

    Args:
        teacher: the teacher's run or compress stage folder (config.yaml + weights), or a list: logits averaged.
        weights: the teacher's weights file in that folder: model.safetensors or best.safetensors.
        temperature: softens both distributions; higher shows more of the teacher's ranking of wrong classes
            (2 by default: the digits students lost more at 4 than at 1 or 2, scripts/bench/RESULTS.md).
        alpha: weight of the teacher's soft targets; 1 - alpha weighs the hard-label loss.
        hidden: weight of DistilBERT's hidden-state cosine loss against the (first) teacher's blocks
            (0: off); needs student blocks of the teacher's width.
        target_key: the key of a mapping batch that holds the targets; every other key goes to the model.
    """
    if meta.task == "regression":
        raise UsageError(f"objective distill: soft targets need class scores; the data's task is '{meta.task}'")
    names = [teacher] if isinstance(teacher, str) else list(teacher)
    if not names:
        raise UsageError("objective distill: teacher is an empty list; name one run or more")
    frozen = [load_saved_model(Path(name), meta, weights).requires_grad_(False) for name in names]
    checked = False
    taps: tuple[BlockTap, BlockTap] | None = None  # (student, first teacher) when hidden > 0

    def objective(model, batch) -> ObjectiveOutput:
        nonlocal frozen, checked, taps
        if hidden > 0 and taps is None:
            taps = BlockTap(model, "student"), BlockTap(frozen[0], "teacher")
        features, targets = split_batch(batch, target_key)
        logits = logits_of(call_model(model, features))
        if not checked:  # once: the teachers' device, and outputs the student can match
            frozen = [one.to(logits.device) for one in frozen]
        with torch.no_grad():
            outputs = [logits_of(call_model(one, features)) for one in frozen]
        if not checked:
            for name, output in zip(names, outputs):
                if output.shape != logits.shape:
                    raise UsageError(
                        f"objective distill: the teacher '{name}' outputs {tuple(output.shape[1:])} per sample, "
                        f"the student {tuple(logits.shape[1:])}; a student must predict the teacher's classes"
                    )
            if taps is not None:
                check_hidden_widths(taps[0].outputs, taps[1].outputs)
            checked = True
        taught = ensemble_logits(outputs)
        loss = alpha * soft_loss(logits, taught, temperature)
        if alpha < 1.0:
            loss = loss + (1.0 - alpha) * loss_fn(logits, targets)
        if taps is not None:
            loss = loss + hidden * hidden_loss(taps[0].outputs, taps[1].outputs)
        return ObjectiveOutput(loss, logits, targets)

    return objective
