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

`init: teacher_layers` starts a student of the teacher's widths but fewer blocks from the (first)
teacher, as DistilBERT did: every tensor outside `blocks` by name, and student block i from teacher
block floor(i * T / S) of T (every other layer for half the depth). Both arms of a baseline start so.
`hidden: w` adds DistilBERT's cosine loss between those paired blocks' outputs (same widths only);
with `projection: true`, TinyBERT's: a learned map per block from the student's width to the teacher's
and the mean squared error, for a narrower student (the maps are not part of the result).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat
from torch import nn

from mlrun.compression.paired_arms import MAX_SEEDS, baseline_arm
from mlrun.compression.stage import Stage, StageContext
from mlrun.errors import UsageError
from mlrun.models.addressing import declared_blocks, evenly_spaced_blocks
from mlrun.models.outputs import call_model, logits_of
from mlrun.models.saved import load_saved_model
from mlrun.models.weights_file import save_weights
from mlrun.registry import models, objectives, stages


@stages.register("distill", report_settings=("baseline", "seeds"))
def distill(
    model: nn.Module,
    context: StageContext,
    /,
    *,
    teacher: str | list[str] | None = None,
    student: dict[str, Any] | None = None,
    temperature: PositiveFloat = 2.0,
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
    baseline: bool = False,
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] | None = None,
    init: Literal["random", "teacher_layers"] = "random",
    hidden: NonNegativeFloat = 0.0,
    projection: bool = False,
) -> Stage:
    """Knowledge distillation: KL to the teacher's softened outputs (alpha) plus the label loss.

    Args:
        teacher: the teacher's run or stage folder, or a list (an ensemble: logits averaged); default the trained run.
        student: a model spec ({name: mlp, hidden_sizes: [64]}) trained from scratch; default the current model.
        temperature: softening of both distributions.
        alpha: weight of the soft targets; 1 - alpha weighs the label loss.
        baseline: also train the student alone (same start, batches, augmentation, schedule): distilled vs alone.
        seeds: the baseline's paired seeds, each drawing the student's initial weights; default 5.
        init: the student's start: random, or teacher_layers (DistilBERT: the teacher's tensors outside
            `blocks`, and evenly spaced teacher blocks; the widths must match).
        hidden: weight of the hidden-state loss between student blocks and the teacher blocks
            init: teacher_layers pairs them with (0: off): DistilBERT's cosine (the teacher's widths).
        projection: TinyBERT's instead: learned maps from student to teacher widths, mean squared error;
            for a narrower student.
    """
    objective_name = context.config.objective.name
    distillable = objectives.trait(objective_name, "distillable", False)
    if not distillable:
        raise UsageError(
            f"distill trains with the teacher's logits beside the labels of supervised or causal_lm batches; "
            f"this run's objective is '{objective_name}'"
        )
    if distillable == "pairs" and isinstance(context.example, Mapping):
        raise UsageError(
            f"distill with objective {objective_name} takes (tokens, next tokens) batches as text_lm yields them; "
            "this data gives tokenizer mappings (input_ids, attention_mask), which it does not shift yet"
        )
    if context.finetune_steps == 0:
        raise UsageError("distill is learning from the teacher: give it fine-tuning (finetune: {train.epochs: N})")
    if seeds is not None and not baseline:
        raise UsageError("distill: seeds counts the baseline arm's paired seeds; add baseline: true")
    named = [teacher] if isinstance(teacher, str) else teacher
    sources = [context.source_run] if named is None else [Path(t) for t in named]
    if not sources:
        raise UsageError("distill: teacher is an empty list; name one run or more, or leave it out")
    if init != "random" and student is None:
        raise UsageError(f"distill: init: {init} starts a new student; give the stage a student: {{name: ...}}")
    if init == "teacher_layers" and baseline and seeds != 1:
        raise UsageError(
            "distill: with init: teacher_layers every seed starts from the same weights, so paired seeds would "
            "repeat one comparison; set seeds: 1, or init: random for a baseline over seeds"
        )
    teachers = [load_saved_model(source, context.meta) for source in sources]
    start_from = teachers[0] if init == "teacher_layers" else None
    if student is not None:
        name, spec = _student_spec(student)
        model = build_student(name, spec, context, context.config.seed, start_from)
        if start_from is not None:
            depth = len(declared_blocks(start_from))
            picked = evenly_spaced_blocks(len(declared_blocks(model)), depth)
            print(
                f"mlrun: distill: the student starts from teacher blocks {picked} of {depth} "
                "and the teacher's tensors outside blocks",
                file=sys.stderr,
            )
    for source, teacher_model in zip(sources, teachers):
        check_outputs_fit(model, teacher_model, context.example, source)
    if projection and hidden == 0:
        raise UsageError("distill: projection maps the hidden states, which hidden: 0 leaves out; set hidden")
    if hidden > 0:
        check_hidden_fits(model, teachers[0], context.example, projection)
    taught = [str(s) for s in sources]
    objective = {"name": "distill", "teacher": taught[0] if len(taught) == 1 else taught}
    objective.update(temperature=temperature, alpha=alpha, **({"hidden": hidden} if hidden > 0 else {}))
    objective.update({"projection": True} if projection else {})
    report = {"student_parameters": sum(p.numel() for p in model.parameters()), "init": init}
    compare = None
    if baseline:
        if student is None:
            raise UsageError(
                "distill: baseline: true compares a fresh student distilled and trained alone; give the stage a "
                "student: {name: ..., ...}"
            )

        def start_for(seed: int, folder: Path) -> Path:  # the student of that seed, as the stage builds it
            folder.mkdir(parents=True, exist_ok=True)
            save_weights(build_student(name, spec, context, seed, start_from), folder / "start.safetensors")
            return folder / "start.safetensors"

        compare = baseline_arm(seeds or 5, context.config.objective.model_dump(mode="json"), start_for)
    return Stage(
        model,
        objective=objective,
        model_spec=student,
        report={**report, **{k: v for k, v in objective.items() if k != "name"}},
        compare=compare,
    )


def _student_spec(student: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    spec = dict(student)
    name = spec.pop("name", None)
    if not name:
        raise UsageError("distill: student needs a model name, e.g. {name: mlp, hidden_sizes: [64]}")
    from pydantic import ValidationError

    from mlrun.config.components import check_component
    from mlrun.config.errors import SourceMap, validation_error_message
    from mlrun.config.schema import ModelSpec

    try:  # the messages a config's model: gets (did-you-mean, the allowed settings, quoting)
        check_component(ModelSpec(name=name, **spec), ("student",), SourceMap())
    except (ValidationError, UsageError) as exc:
        text = (
            validation_error_message(exc, SourceMap(), ModelSpec, ("student",))
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        raise UsageError(f"distill: {text.removeprefix('config: ')}") from None  # no file to name: a stage's setting
    return name, spec


def build_student(
    name: str, spec: dict[str, Any], context: StageContext, seed: int, teacher: nn.Module | None = None
) -> nn.Module:
    """A freshly initialised student (the seed fixes its initial weights), started from `teacher`'s
    layers when one is given."""
    torch.manual_seed(seed)
    student = models.build(name, context.meta, **spec)
    if teacher is not None:
        copy_teacher_layers(student, teacher)
    return student


@torch.no_grad()
def copy_teacher_layers(student: nn.Module, teacher: nn.Module) -> None:
    """DistilBERT's start: the teacher's tensors outside `blocks` by name, and student block i from
    teacher block floor(i * T / S). Exit 2 naming the first tensor that does not fit (the student
    must keep the teacher's widths)."""
    mine, theirs = declared_blocks(student), declared_blocks(teacher)
    if len(mine) > len(theirs):
        raise UsageError(
            f"distill: init: teacher_layers needs a student with at most the teacher's {len(theirs)} blocks; "
            f"this one has {len(mine)}"
        )
    picked = evenly_spaced_blocks(len(mine), len(theirs))
    in_blocks = {id(t) for block in mine for t in [*block.parameters(), *block.buffers()]}
    outside = {k: v for k, v in student.state_dict(keep_vars=True).items() if id(v) not in in_blocks}
    whole = teacher.state_dict()
    pairs = [(k, v, whole.get(k)) for k, v in outside.items()]
    for i, j in enumerate(picked):
        source = theirs[j].state_dict()
        pairs += [(f"block {i} <- teacher block {j}: {k}", v, source.get(k)) for k, v in mine[i].state_dict().items()]
    for where, tensor, value in pairs:
        if value is None or value.shape != tensor.shape:
            found = "missing" if value is None else tuple(value.shape)
            raise UsageError(
                f"distill: init: teacher_layers: {where} is {tuple(tensor.shape)} in the student, {found} in the "
                "teacher; keep the teacher's widths (fewer blocks only) or use init: random"
            )
        tensor.copy_(value)


@torch.no_grad()
def check_hidden_fits(student: nn.Module, teacher: nn.Module, example: Any, projection: bool) -> None:
    """Exit 2 before any training when the hidden-state loss cannot pair the models' blocks."""
    from mlrun.models.block_outputs import BlockTap, check_hidden_widths

    copies = copy.deepcopy(student).eval(), copy.deepcopy(teacher).eval()  # the taps' hooks stay off the stage's
    student_tap, teacher_tap = BlockTap(copies[0], "student"), BlockTap(copies[1], "teacher")
    for model in copies:
        call_model(model, example)
    check_hidden_widths(student_tap.outputs, teacher_tap.outputs, projected=projection)


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
