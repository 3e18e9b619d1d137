"""Training and memory techniques (registry `techniques`): `factory(model, /, *, settings)`.

A technique changes the model in place (activation checkpointing) and may return a Callback
that follows the loop (EMA).
"""

from mlrun.techniques import (  # noqa: F401
    activation_checkpointing,
    early_exit,
    ema,
    freeze,
    lora,
    lp_ft,
    magnitude_pruning,
    optimizer_in_backward,
    qat,
    weight_clustering,
)
