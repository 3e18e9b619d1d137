"""Training and memory techniques (registry `techniques`): `factory(model, /, *, settings)`.

A technique changes the model in place (activation checkpointing) and may return a Callback
that follows the loop (EMA).
"""

from mlrun.techniques import activation_checkpointing, early_exit, ema, freeze, lora, optimizer_in_backward  # noqa: F401
