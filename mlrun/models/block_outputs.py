"""The outputs of a model's declared `blocks` in a forward, for losses on hidden states (distill's `hidden`)."""

from __future__ import annotations

import torch
from torch import nn

from mlrun.errors import UsageError
from mlrun.models.addressing import evenly_spaced_blocks


class BlockTap:
    """The output of each of a model's declared `blocks` in its last forward (forward hooks), found
    through any wrapper (DDP, torch.compile) as the first module with a `blocks` list."""

    def __init__(self, model: nn.Module, role: str) -> None:
        owner = next(
            (m for m in model.modules() if isinstance(getattr(m, "blocks", None), (nn.ModuleList, nn.Sequential))), None
        )
        if owner is None:
            raise UsageError(
                f"distill hidden: the {role} ({type(model).__name__}) declares no `blocks` list, so its hidden "
                "states cannot be matched; set hidden: 0"
            )
        self.outputs: list[torch.Tensor | None] = [None] * len(owner.blocks)
        for index, block in enumerate(owner.blocks):
            block.register_forward_hook(self._keeper(index))

    def _keeper(self, index: int):
        def keep(module, args, output) -> None:
            self.outputs[index] = output[0] if isinstance(output, tuple) else output

        return keep


def check_hidden_widths(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> None:
    if len(student) > len(teacher):
        raise UsageError(
            f"distill hidden: the student has {len(student)} blocks, the teacher {len(teacher)}; the hidden-state "
            "loss pairs each student block with a teacher block, so the student needs at most as many"
        )
    picked = [teacher[j] for j in evenly_spaced_blocks(len(student), len(teacher))]
    for i, (mine, theirs) in enumerate(zip(student, picked)):
        if mine.shape != theirs.shape:
            raise UsageError(
                f"distill hidden: student block {i} outputs {tuple(mine.shape[1:])}, its teacher block "
                f"{tuple(theirs.shape[1:])}; the hidden-state loss needs the teacher's widths (a shallower "
                "student, as init: teacher_layers builds); set hidden: 0 for a narrower student"
            )
