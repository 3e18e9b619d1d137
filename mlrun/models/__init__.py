"""Built-in models; importing the package registers them (registry `models`).

Every model keeps its repeated blocks in `model.blocks` (an nn.ModuleList), so techniques such as
activation checkpointing and FSDP auto-wrap know what to wrap.
"""

from mlrun.models import cnn, hf, mlp, resnet, transformer  # noqa: F401
