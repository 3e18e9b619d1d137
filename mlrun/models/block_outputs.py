"""The outputs of a model's declared `blocks` in a forward, for losses on hidden states (distill's `hidden`).

A block's features lie on the channel axis of an image-shaped output (batch, channels, height, width)
and on the last axis otherwise (batch, features) or (batch, tokens, features): `feature_axis`.
"""

from __future__ import annotations

import torch
from torch import nn

from mlrun.errors import UsageError
from mlrun.models.addressing import evenly_spaced_blocks
from mlrun.models.outputs import call_model


def feature_axis(output: torch.Tensor) -> int:
    return 1 if output.dim() == 4 else -1


def blocks_of(model: nn.Module, role: str) -> nn.ModuleList | nn.Sequential:
    """The first `blocks` list in the model, found through any wrapper (DDP, torch.compile, LoRA)."""
    owner = next(
        (m for m in model.modules() if isinstance(getattr(m, "blocks", None), (nn.ModuleList, nn.Sequential))), None
    )
    if owner is None:
        raise UsageError(
            f"distill hidden: the {role} ({type(model).__name__}) declares no `blocks` list, so its hidden "
            "states cannot be matched; set hidden: 0"
        )
    return owner.blocks


class BlockTap:
    """The output of each of a model's declared `blocks` in its last forward (forward hooks)."""

    def __init__(self, model: nn.Module, role: str) -> None:
        blocks = blocks_of(model, role)
        self.outputs: list[torch.Tensor | None] = [None] * len(blocks)
        self.handles = [block.register_forward_hook(self._keeper(i)) for i, block in enumerate(blocks)]

    def _keeper(self, index: int):
        def keep(module, args, output) -> None:
            self.outputs[index] = output[0] if isinstance(output, tuple) else output

        return keep

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def measured_block_widths(model: nn.Module, role: str, example) -> list[int]:
    """The feature width of each declared block's output, measured in one eval-mode forward of
    `example` (any block works, whatever layer it ends in); the model's mode and hooks are restored."""
    tap, was_training = BlockTap(model, role), model.training
    model.eval()
    try:
        call_model(model, example)
    finally:
        model.train(was_training)
        tap.remove()
    if None in tap.outputs:
        raise UsageError(
            f"distill projection: the {role}'s block {tap.outputs.index(None)} did not run in a forward; "
            "every declared block must be called by the model's forward"
        )
    return [output.shape[feature_axis(output)] for output in tap.outputs]


class FeatureProjections(nn.Module):
    """TinyBERT's learned maps W_i from student block i's features to its paired teacher block's
    width, so a narrower student's hidden states can be compared with the teacher's."""

    def __init__(self, student_widths: list[int], teacher_widths: list[int]) -> None:
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(s, t) for s, t in zip(student_widths, teacher_widths))

    def forward(self, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        projected = []
        for project, output in zip(self.maps, outputs):
            axis = feature_axis(output)
            projected.append(project(output.movedim(axis, -1)).movedim(-1, axis))
        return projected


def check_block_count(student: int, teacher: int) -> None:
    if student > teacher:
        raise UsageError(
            f"distill hidden: the student has {student} blocks, the teacher {teacher}; the hidden-state "
            "loss pairs each student block with a teacher block, so the student needs at most as many"
        )


def check_hidden_widths(student: list[torch.Tensor], teacher: list[torch.Tensor], projected: bool = False) -> None:
    """Exit 2 unless every student block can be compared with its teacher block: the same shape, or
    with `projected` the same shape but for the feature axis (the projections bridge the widths)."""
    check_block_count(len(student), len(teacher))
    picked = [teacher[j] for j in evenly_spaced_blocks(len(student), len(teacher))]
    for i, (mine, theirs) in enumerate(zip(student, picked)):
        if not projected and mine.shape != theirs.shape:
            raise UsageError(
                f"distill hidden: student block {i} outputs {tuple(mine.shape[1:])}, its teacher block "
                f"{tuple(theirs.shape[1:])}; the cosine hidden-state loss needs the teacher's widths (a shallower "
                "student, as init: teacher_layers builds); add projection: true for a narrower student"
            )
        if projected and _without_features(mine) != _without_features(theirs):
            raise UsageError(
                f"distill hidden: student block {i} outputs {tuple(mine.shape[1:])}, its teacher block "
                f"{tuple(theirs.shape[1:])}; a projection maps features (axis {feature_axis(mine)}) only, so the "
                "other sizes (tokens, height, width) must match"
            )


def _without_features(output: torch.Tensor) -> tuple[int, ...]:
    """The rank, and the sizes but for the batch and the feature axis."""
    shape = list(output.shape)
    del shape[feature_axis(output)]
    return (output.dim(), *shape[1:])
