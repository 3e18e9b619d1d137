"""Early-exit heads a model can carry (BranchyNet, Teerapittayanon et al. 2016).

The heads hang on forward hooks of `model.blocks`, so any model that runs its blocks in sequence
and treats samples independently after them (mlp, cnn, resnet, transformer_classifier) gains
exits without changing its code; the plain forward still returns the final head's logits.
Attached by the `early_exit` technique, trained by the `early_exit` objective.

    exits = find_exits(model)
    logits, exit_index = exits.infer(model, inputs, threshold=0.9)   # per-sample early exit
    all_logits = exits.collect(model, inputs)                          # every exit, then the final head
"""

from __future__ import annotations

import torch
from torch import nn

from mlrun.models.outputs import call_model, logits_of


class _AllExited(Exception):
    """Raised from a hook when every sample of the batch has left: the deeper blocks are not run."""


class ExitHead(nn.Module):
    """Pool what a block outputs to one vector per sample, then classify it."""

    def __init__(self, width: int, classes: int, pool: int, hidden: int):
        super().__init__()
        self.pool = pool
        features = width * pool * pool
        layers = [nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)] if hidden else []
        self.classify = nn.Sequential(*layers) if hidden else nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (B, C, H, W) feature maps
            x = nn.functional.adaptive_avg_pool2d(x, self.pool).flatten(1)
        elif x.dim() == 3:  # (B, T, C) token features
            x = x.mean(dim=1)
        return self.classify(x)


class EarlyExits(nn.Module):
    """The exit heads (saved with the model as `exits.heads.N`) and the hooks that run them."""

    def __init__(self, blocks: nn.ModuleList, after: list[int], weights: list[float], thresholds: list[float], heads):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.after, self.weights, self.thresholds = tuple(after), tuple(weights), tuple(thresholds)
        self.num_blocks = len(blocks)
        self.mode: str | None = None  # None: hooks do nothing; "collect": every exit; "exit": per-sample exits
        for index, block in enumerate(after):
            blocks[block].register_forward_hook(_Tap(self, index))

    def depth(self, exit_index: int) -> float:
        """Share of the blocks a sample leaving at `exit_index` ran (the final head: 1.0)."""
        return 1.0 if exit_index >= len(self.after) else (self.after[exit_index] + 1) / self.num_blocks

    def collect(self, model: nn.Module, features) -> list[torch.Tensor]:
        """Logits of every exit, then of the final head, from one full forward (`features`: a tensor or a mapping)."""
        self.mode, self.sink = "collect", []
        try:
            final = logits_of(call_model(model, features))
            return [*self.sink, final]
        finally:
            self.mode, self.sink = None, []

    @torch.no_grad()
    def infer(self, model: nn.Module, inputs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the exit each sample left at): samples leave at the first exit confident enough."""
        self.threshold = threshold
        self.remaining = torch.arange(len(inputs), device=inputs.device)
        self.exit_at = torch.full((len(inputs),), len(self.after), dtype=torch.long, device=inputs.device)
        self.logits: torch.Tensor | None = None
        self.mode = "exit"
        try:
            final = logits_of(model(inputs))
            self._store(self.remaining, final)
        except _AllExited:
            pass
        finally:
            self.mode = None
        return self.logits, self.exit_at

    def _leave(self, index: int, output: torch.Tensor) -> torch.Tensor:
        logits = self.heads[index](output)
        leaving = logits.softmax(dim=-1).amax(dim=-1) >= self.threshold
        self._store(self.remaining[leaving], logits[leaving])
        self.exit_at[self.remaining[leaving]] = index
        staying = ~leaving
        self.remaining = self.remaining[staying]
        if len(self.remaining) == 0:
            raise _AllExited
        return output[staying]  # the deeper blocks see only the samples still in the network

    def _store(self, rows: torch.Tensor, logits: torch.Tensor) -> None:
        if self.logits is None:
            self.logits = logits.new_zeros((len(self.exit_at), logits.shape[-1]))
        self.logits[rows] = logits


class _Tap:
    """The forward hook of one exit's block; an object, not a closure, so a deep copy of the model
    (export copies it) hooks its own copy of the exits."""

    def __init__(self, exits: EarlyExits, index: int):
        self.exits, self.index = exits, index

    def __call__(self, module, args, output):
        exits = self.exits
        if exits.mode == "collect":
            exits.sink.append(exits.heads[self.index](output))
        elif exits.mode == "exit":
            return exits._leave(self.index, output)
        return None


def find_exits(model: nn.Module) -> EarlyExits | None:
    """The model's exits, through any wrapper (DDP, torch.compile), or None."""
    return next((m for m in model.modules() if isinstance(m, EarlyExits)), None)
