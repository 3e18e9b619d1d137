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
Evaluation reports the soft-target and label terms as val/loss (a hidden-state term, below, only trains);
metrics score the student's own predictions.

`hidden: w` adds a hidden-state loss, w * mean over student blocks of a distance between student
block i's output and the (first) teacher's block floor(i * T / S), the blocks that
`init: teacher_layers` copies (models that declare `blocks`):
- DistilBERT's (default): 1 - cosine of the feature vectors; the widths must be equal (a shallower
  student of the teacher's width).
- `projection: true`, TinyBERT's: the mean squared error between W_i (student block i's output) and
  the teacher block's, through a learned linear map W_i per block, so a narrower student can learn
  the teacher's hidden states. The maps are trained with the student (a group of their own in the
  optimizer, averaged across processes), checkpointed for resume, and dropped at the end: the
  student's saved weights and exports are the student's alone.
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
from mlrun.models.block_outputs import (
    BlockTap,
    FeatureProjections,
    check_block_count,
    check_hidden_widths,
    feature_axis,
    measured_block_widths,
)
from mlrun.models.outputs import call_model, logits_of
from mlrun.models.saved import load_saved_model
from mlrun.objectives.base import Objective, ObjectiveOutput, ObjectiveWithParameters
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
    losses = [
        1.0 - F.cosine_similarity(s.float(), t.float(), dim=feature_axis(s)).mean() for s, t in zip(student, picked)
    ]
    return torch.stack(losses).mean()


def projected_hidden_loss(projected: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """TinyBERT's loss: MSE between the projected student block i and teacher block floor(i * T / S), averaged."""
    picked = [teacher[j] for j in evenly_spaced_blocks(len(projected), len(teacher))]
    return torch.stack([F.mse_loss(s.float(), t.float()) for s, t in zip(projected, picked)]).mean()


class Distillation:
    """The objective: soft targets from the frozen teachers, the label loss, and the hidden-state term."""

    def __init__(self, loss_fn, names: list[str], frozen: list[torch.nn.Module], settings: dict) -> None:
        self.loss_fn, self.names, self.frozen = loss_fn, names, frozen
        self.temperature, self.alpha = settings["temperature"], settings["alpha"]
        self.hidden, self.target_key = settings["hidden"], settings["target_key"]
        self.checked = False
        self.taps: tuple[BlockTap, BlockTap] | None = None  # (student, first teacher) when hidden > 0

    def __call__(self, model, batch) -> ObjectiveOutput:
        if self.hidden > 0 and self.taps is None:
            self.taps = BlockTap(model, "student"), BlockTap(self.frozen[0], "teacher")
        features, targets = split_batch(batch, self.target_key)
        logits = logits_of(call_model(model, features))
        if not self.checked:  # once: the teachers' device, and outputs the student can match
            self.frozen = [one.to(logits.device) for one in self.frozen]
        with torch.no_grad():
            outputs = [logits_of(call_model(one, features)) for one in self.frozen]
        if not self.checked:
            self.check(logits, outputs)
            self.checked = True
        loss = self.alpha * soft_loss(logits, ensemble_logits(outputs), self.temperature)
        if self.alpha < 1.0:
            loss = loss + (1.0 - self.alpha) * self.loss_fn(logits, targets)
        if self.taps is not None and model.training:  # a training signal: val/loss is soft targets + labels
            loss = loss + self.hidden * self.hidden_term(self.taps[0].outputs, self.taps[1].outputs)
        return ObjectiveOutput(loss, logits, targets)

    def check(self, logits: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        for name, output in zip(self.names, outputs):
            if output.shape != logits.shape:
                raise UsageError(
                    f"objective distill: the teacher '{name}' outputs {tuple(output.shape[1:])} per sample, "
                    f"the student {tuple(logits.shape[1:])}; a student must predict the teacher's classes"
                )
        if self.taps is not None:
            self.check_hidden(self.taps[0].outputs, self.taps[1].outputs)

    def check_hidden(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> None:
        check_hidden_widths(student, teacher)

    def hidden_term(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        return hidden_loss(student, teacher)


class ProjectedDistillation(Distillation, ObjectiveWithParameters):
    """Distillation whose hidden term goes through TinyBERT's learned projections (`projection: true`)."""

    name = "distill"  # its state's key in checkpoints

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.projections: FeatureProjections | None = None
        self.averaging = False

    def attach(self, model: torch.nn.Module, example) -> None:
        """One map per student block, from its width to its paired teacher block's, both measured on
        `example` (a block's last layer need not be the one that sets its width)."""
        mine = measured_block_widths(model, "student", example)
        theirs = measured_block_widths(self.frozen[0], "teacher", example)
        check_block_count(len(mine), len(theirs))
        picked = evenly_spaced_blocks(len(mine), len(theirs))
        self.projections = FeatureProjections(mine, [theirs[j] for j in picked])

    def trained_module(self) -> torch.nn.Module:
        return self.projections

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The maps step like the model's own matrices: the settings (lr, betas; Muon's AdamW side) of the
        optimizer's first group AdamW-like steps, the largest weight decay of any group on the maps'
        matrices and none on their biases. (The optimizer's constructor defaults would not do: mlrun's
        factories put the configured values in the groups.)"""
        groups = optimizer.param_groups
        template = next((g for g in groups if g.get("algorithm", "adamw") == "adamw"), groups[0])
        settings = {k: v for k, v in template.items() if k not in ("params", "name")}
        decay = max((g.get("weight_decay", 0.0) for g in groups), default=0.0)
        maps = list(self.projections.parameters())
        for kind, params, weight_decay in (
            ("matrices", [p for p in maps if p.ndim >= 2], decay),
            ("biases", [p for p in maps if p.ndim < 2], 0.0),
        ):
            group = {**settings, "params": params, "weight_decay": weight_decay, "name": f"distill projections {kind}"}
            optimizer.add_param_group(group)
        return optimizer

    def on_train_start(self, model: torch.nn.Module) -> None:
        """On the model's device before any resume (so restored optimizer state lands beside the maps);
        under several processes, rank 0's maps everywhere and their gradients averaged, as DDP does
        for the model's own parameters."""
        from torch import distributed

        self.projections.to(next(model.parameters()).device)  # in place: the optimizer keeps the same tensors
        if self.averaging or not (distributed.is_initialized() and distributed.get_world_size() > 1):
            return
        self.averaging = True
        for parameter in self.projections.parameters():
            distributed.broadcast(parameter.data, src=0)
            # Every micro-batch's gradient is averaged, those of DDP's no_sync accumulation steps too:
            # the same sum, a little more communication.
            parameter.register_hook(_averaged_across_processes)

    def hidden_term(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        device = student[0].device
        # Profiling and the batch-size probe train without on_train_start, which moves the maps.
        if next(self.projections.parameters()).device != device:
            self.projections.to(device)
        # In float32 like the maps: under mixed precision the block outputs are bf16/fp16, and the
        # objective runs outside the model's autocast.
        return projected_hidden_loss(self.projections([s.float() for s in student]), teacher)

    def check_hidden(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> None:
        check_hidden_widths(student, teacher, projected=True)

    def state_dict(self) -> dict:
        return {"projections": {k: v.cpu() for k, v in self.projections.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.projections.load_state_dict(state["projections"])  # copies in place: the optimizer's tensors


def _averaged_across_processes(gradient: torch.Tensor) -> torch.Tensor:
    from torch import distributed

    gradient = gradient.clone()
    distributed.all_reduce(gradient)
    return gradient / distributed.get_world_size()


def scored_without_teacher(settings: dict) -> tuple[dict, str] | None:
    """For eval, predict and export, which need the student alone: when a teacher folder is gone, the
    objective to score with instead (the labels, through the same loss) and why; None when all are there."""
    teachers = settings.get("teacher")
    names = [teachers] if isinstance(teachers, str) else list(teachers or [])
    gone = [name for name in names if not (Path(name) / "config.yaml").is_file()]
    if not gone:
        return None
    return {"name": "supervised", "target_key": settings.get("target_key", TARGET_KEY)}, (
        f"the distillation teacher {gone[0]} is gone: val/loss is the label loss alone"
    )


# `standalone`: how a trained student is scored once its teachers are gone (mlrun.engine.restore).
@objectives.register("distill", standalone=scored_without_teacher)
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
    projection: bool = False,
    target_key: str = TARGET_KEY,
) -> Objective:
    """Match a trained teacher's softened outputs (weight alpha) and the labels (weight 1 - alpha).

    Args:
        teacher: the teacher's run or compress stage folder (config.yaml + weights), or a list: logits averaged.
        weights: the teacher's weights file in that folder: model.safetensors or best.safetensors.
        temperature: softens both distributions; higher shows more of the teacher's ranking of wrong classes
            (2 by default: the digits students lost more at 4 than at 1 or 2, scripts/bench/RESULTS.md).
        alpha: weight of the teacher's soft targets; 1 - alpha weighs the hard-label loss.
        hidden: weight of the hidden-state loss against the (first) teacher's blocks (0: off): DistilBERT's
            cosine, which needs student blocks of the teacher's width, or TinyBERT's with projection.
        projection: learn a linear map from each student block's features to its teacher block's and
            match them by mean squared error (TinyBERT): a narrower student's hidden states can be taught.
        target_key: the key of a mapping batch that holds the targets; every other key goes to the model.
    """
    if meta.task == "regression":
        raise UsageError(f"objective distill: soft targets need class scores; the data's task is '{meta.task}'")
    if projection and hidden == 0:
        raise UsageError("objective distill: projection maps the hidden states, which hidden: 0 leaves out; set hidden")
    names = [teacher] if isinstance(teacher, str) else list(teacher)
    if not names:
        raise UsageError("objective distill: teacher is an empty list; name one run or more")
    frozen = [load_saved_model(Path(name), meta, weights).requires_grad_(False) for name in names]
    settings = {"temperature": temperature, "alpha": alpha, "hidden": hidden, "target_key": target_key}
    return (ProjectedDistillation if projection else Distillation)(loss_fn, names, frozen, settings)
