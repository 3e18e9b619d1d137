"""The weights a run evaluates and saves: EMA's average when it is on, else the model's own.

Callbacks offer their weights through `callback.weights(model)` contexts; under FSDP2 every process
sends its shards and the main process writes the whole model.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from safetensors.torch import save_file

from mlrun.models.weights_file import save_weights, share_like_umask


class RunWeights:
    def __init__(self, accelerator, model, callbacks, sharded: bool, run_dir: Path):
        self.accelerator, self.model, self.callbacks = accelerator, model, callbacks
        self.sharded, self.run_dir = sharded, run_dir

    @contextlib.contextmanager
    def in_use(self):
        """Inside, the model holds the weights to evaluate and save with."""
        with contextlib.ExitStack() as stack:
            for callback in self.callbacks:
                stack.enter_context(callback.weights(self.model))
            yield

    def save(self, name: str) -> None:
        """Write the weights in use to `<run_dir>/<name>` (collective: every process calls it)."""
        path = self.run_dir / name
        unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        with self.in_use():
            if self.sharded:
                from mlrun.engine.fsdp import full_state_dict

                weights = full_state_dict(unwrapped)
                if self.accelerator.is_main_process:
                    save_file(weights, str(path), metadata={"format": "pt"})
                    share_like_umask(path)
            elif self.accelerator.is_main_process:
                save_weights(unwrapped, path)
        self.accelerator.wait_for_everyone()
