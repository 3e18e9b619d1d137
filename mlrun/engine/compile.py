"""`train.compile`: torch.compile applied in place, so weight and checkpoint names stay those of eager.

`torch.compile(model)` wraps the model in an OptimizedModule whose state_dict keys gain an
`_orig_mod.` prefix: a checkpoint written compiled then fails to load eager and the reverse
(Lightning #20233, #17415). `nn.Module.compile()` compiles the module's forward in place instead;
the module, its parameters and their names stay as they are.

    true:      the whole model, one graph (longest start-up, most fusion)
    regional:  each declared block (model.blocks) on its own: identical blocks share one compiled
               graph, so start-up is about one block's compile, whatever the depth
"""

from __future__ import annotations

from torch import nn

from mlrun.models.parts import declared_blocks


def compile_model(model: nn.Module, mode: bool | str) -> None:
    """Compile `model` in place as `train.compile` says (false: nothing)."""
    if mode == "regional":
        for block in declared_blocks(model):
            block.compile()
    elif mode:
        model.compile()
