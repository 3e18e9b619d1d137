"""`distill`: fine-tune the current model, or train a new student, against a teacher's soft outputs.

    compress:
      - {name: prune_structured, ratio: 0.5, finetune: false}
      - {name: distill, alpha: 0.7, temperature: 4, finetune: {train.epochs: 5}}   # teacher: the trained run
      - {name: distill, student: {name: mlp, hidden_sizes: [128]}, finetune: {train.epochs: 10}}
      - {name: distill, teacher: [runs/a, runs/b], student: {...}, baseline: true, seeds: 5}

The teacher defaults to the trained run the chain started from (its final weights); `teacher:`
names another run or stage folder. Without `student:` the model coming out of the previous stage
learns from the teacher (recovering what pruning lost); with it, a freshly initialised model of any
architecture does, and becomes the stage's result (its config's `model:`). Fine-tuning uses the
`distill` objective; the result keeps the run's own objective for evaluation and export.

A list of teachers is an ensemble: their logits are averaged. `baseline: true` also trains the same
student alone (mlrun.compression.paired_arms) over `seeds` paired seeds and reports both arms, the
mean gain of distilling and its 95% interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, PositiveFloat
from torch import nn

from mlrun.compression.paired_arms import MAX_SEEDS, baseline_arm
from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.models.outputs import call_model, logits_of
from mlrun.models.saved import load_saved_model
from mlrun.models.weights_file import save_weights
from mlrun.registry import models, stages


@stages.register("distill")
def distill(
    model: nn.Module,
    context: StageContext,
    /,
    *,
    teacher: str | list[str] | None = None,
    student: dict[str, Any] | None = None,
    temperature: PositiveFloat = 4.0,
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
    baseline: bool = False,
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] | None = None,
) -> Stage:
    """Knowledge distillation: KL to the teacher's softened outputs (alpha) plus the label loss.

    Args:
        teacher: the teacher's run or stage folder, or a list (an ensemble: logits averaged); default the trained run.
        student: a model spec ({name: mlp, hidden_sizes: [64]}) trained from scratch; default the current model.
        temperature: softening of both distributions.
        alpha: weight of the soft targets; 1 - alpha weighs the label loss.
        baseline: also train the student alone (same start, batches, augmentation, schedule): distilled vs alone.
        seeds: the baseline's paired seeds, each drawing the student's initial weights; default 5.
    """
    if context.config.objective.name != "supervised":
        raise UsageError(
            f"distill trains with the teacher's logits beside the labels of supervised batches; this run's "
            f"objective is '{context.config.objective.name}'"
        )
    if context.finetune_steps == 0:
        raise UsageError("distill is learning from the teacher: give it fine-tuning (finetune: {train.epochs: N})")
    if seeds is not None and not baseline:
        raise UsageError("distill: seeds counts the baseline arm's paired seeds; add baseline: true")
    named = [teacher] if isinstance(teacher, str) else teacher
    sources = [context.source_run] if named is None else [Path(t) for t in named]
    if not sources:
        raise UsageError("distill: teacher is an empty list; name one run or more, or leave it out")
    if student is not None:
        name, spec = _student_spec(student)
        model = build_student(name, spec, context, context.config.seed)
    for source in sources:
        check_outputs_fit(model, load_saved_model(source, context.meta), context.example, source)
    taught = [str(s) for s in sources]
    objective = {"name": "distill", "teacher": taught[0] if len(taught) == 1 else taught}
    objective.update(temperature=temperature, alpha=alpha)
    compare = None
    if baseline:
        if student is None:
            raise UsageError(
                "distill: baseline: true compares a fresh student distilled and trained alone; give the stage a "
                "student: {name: ..., ...}"
            )

        def start_for(seed: int, folder: Path) -> Path:  # the student of that seed, as the stage builds it
            folder.mkdir(parents=True, exist_ok=True)
            save_weights(build_student(name, spec, context, seed), folder / "start.safetensors")
            return folder / "start.safetensors"

        compare = baseline_arm(seeds or 5, context.config.objective.model_dump(mode="json"), start_for)
    params = sum(p.numel() for p in model.parameters())
    return Stage(
        model,
        objective=objective,
        model_spec=student,
        report={"student_parameters": params, **{k: v for k, v in objective.items() if k != "name"}},
        compare=compare,
    )


def _student_spec(student: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    spec = dict(student)
    name = spec.pop("name", None)
    if not name:
        raise UsageError("distill: student needs a model name, e.g. {name: mlp, hidden_sizes: [64]}")
    try:
        models.validate(name, spec)
    except ValueError as exc:
        raise UsageError(f"distill: student: {exc}") from None
    return name, spec


def build_student(name: str, spec: dict[str, Any], context: StageContext, seed: int) -> nn.Module:
    """A freshly initialised student; the seed fixes its initial weights."""
    torch.manual_seed(seed)
    return models.build(name, context.meta, **spec)


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
