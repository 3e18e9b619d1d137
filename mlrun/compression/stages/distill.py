"""`distill`: fine-tune the current model, or train a new student, against a teacher's soft outputs.

    compress:
      - {name: prune_structured, ratio: 0.5, finetune: false}
      - {name: distill, alpha: 0.7, temperature: 4, finetune: {train.epochs: 5}}   # teacher: the trained run
      - {name: distill, student: {name: mlp, hidden_sizes: [128]}, finetune: {train.epochs: 10}}

The teacher defaults to the trained run the chain started from (its final weights); `teacher:`
names another run or stage folder. Without `student:` the model coming out of the previous stage
learns from the teacher (recovering what pruning lost); with it, a freshly initialised model of any
architecture does, and becomes the stage's result (its config's `model:`). Fine-tuning uses the
`distill` objective; the result keeps the run's own objective for evaluation and export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, PositiveFloat
from torch import nn

from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.models.outputs import call_model, logits_of
from mlrun.models.saved import load_saved_model
from mlrun.registry import models, stages


@stages.register("distill")
def distill(
    model: nn.Module,
    context: StageContext,
    /,
    *,
    teacher: str | None = None,
    student: dict[str, Any] | None = None,
    temperature: PositiveFloat = 4.0,
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
) -> Stage:
    """Knowledge distillation: KL to the teacher's softened outputs (alpha) plus the label loss.

    Args:
        teacher: run directory or stage folder of the teacher; default the trained run being compressed.
        student: a model spec ({name: mlp, hidden_sizes: [64]}) trained from scratch; default the current model.
        temperature: softening of both distributions.
        alpha: weight of the soft targets; 1 - alpha weighs the label loss.
    """
    if context.config.objective.name != "supervised":
        raise UsageError(
            f"distill trains with the teacher's logits beside the labels of supervised batches; this run's "
            f"objective is '{context.config.objective.name}'"
        )
    if context.finetune_steps == 0:
        raise UsageError("distill is learning from the teacher: give it fine-tuning (finetune: {train.epochs: N})")
    source = Path(teacher) if teacher else context.source_run
    if student is not None:
        spec = dict(student)
        name = spec.pop("name", None)
        if not name:
            raise UsageError("distill: student needs a model name, e.g. {name: mlp, hidden_sizes: [64]}")
        try:
            models.validate(name, spec)
        except ValueError as exc:
            raise UsageError(f"distill: student: {exc}") from None
        torch.manual_seed(context.config.seed)
        model = models.build(name, context.meta, **spec)
    check_outputs_fit(model, load_saved_model(source, context.meta), context.example, source)
    objective = {"name": "distill", "teacher": str(source), "temperature": temperature, "alpha": alpha}
    params = sum(p.numel() for p in model.parameters())
    return Stage(
        model,
        objective=objective,
        model_spec=student,
        report={"teacher": str(source), "student_parameters": params, "temperature": temperature, "alpha": alpha},
    )


@torch.no_grad()
def check_outputs_fit(student: nn.Module, teacher: nn.Module, example: Any, source: Path) -> None:
    """Exit 2 before any training when the student cannot match the teacher's outputs."""
    was_training = student.training
    student.eval()
    try:
        mine, theirs = logits_of(call_model(student, example)), logits_of(call_model(teacher, example))
    finally:
        student.train(was_training)
    if mine.shape != theirs.shape:
        raise UsageError(
            f"the teacher '{source}' outputs {tuple(theirs.shape[1:])} per sample, the student "
            f"{tuple(mine.shape[1:])}; a student must predict the teacher's classes"
        )
