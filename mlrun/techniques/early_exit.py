"""Early-exit networks (BranchyNet, Teerapittayanon et al. 2016): classifier heads after chosen blocks.

Training sums the exits' losses with weights (the `early_exit` objective); at inference a sample
leaves at the first exit whose softmax confidence reaches a threshold, so easy samples skip the
deeper blocks. The heads hang on forward hooks of `model.blocks`, so any model that runs its
blocks in sequence and treats samples independently after them (mlp, cnn, resnet,
transformer_classifier) gains exits without changing its code; the plain forward still returns
the final head's logits (metrics, export and the memory estimate see the same model).

    exits = find_exits(model)
    logits, exit_index = exits.infer(model, inputs, threshold=0.9)   # per-sample early exit
    all_logits = exits.collect(model, inputs)                          # every exit, then the final head

Try: `mlrun train configs/digits_early_exit.yaml`, then `mlrun eval runs/digits_early_exit`.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import nn

from mlrun.errors import UsageError
from mlrun.models.outputs import call_model, logits_of
from mlrun.registry import techniques
from mlrun.techniques.activation_checkpointing import declared_blocks

Confidence = Annotated[float, Field(gt=0.0, le=1.0)]
# Attributes that give a block's output width, looked up from its last layer backwards.
WIDTH_ATTRIBUTES = ("num_features", "out_channels", "out_features", "normalized_shape", "embedding_dim")


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

    def __init__(self, model: nn.Module, after: list[int], weights: list[float], thresholds: list[float], heads):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.after, self.weights, self.thresholds = tuple(after), tuple(weights), tuple(thresholds)
        blocks = declared_blocks(model)
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


def block_width(block: nn.Module, index: int) -> int:
    for layer in reversed(list(block.modules())):
        for name in WIDTH_ATTRIBUTES:
            value = getattr(layer, name, None)
            if isinstance(value, int) or (isinstance(value, tuple) and len(value) == 1):
                return value if isinstance(value, int) else value[0]
    raise UsageError(f"technique early_exit: cannot tell the output width of block {index} ({type(block).__name__})")


def final_classes(model: nn.Module) -> int:
    """Output width of the model's own head: the last linear layer outside its blocks."""
    inside = {id(m) for m in declared_blocks(model).modules()}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in inside]
    if not linears:
        raise UsageError("technique early_exit: the model has no linear head after its blocks to match")
    return linears[-1].out_features


# Declared with the entry: the exits are trained by objective early_exit, and they are parameters
# that a reloaded export must rebuild before loading its weights.
@techniques.register("early_exit", objective="early_exit", adds_parameters=True)
def early_exit(
    model: nn.Module,
    /,
    *,
    after: list[NonNegativeInt],
    weights: list[Annotated[float, Field(ge=0.0)]] | None = None,
    thresholds: list[Confidence] = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99],  # noqa: B006 - never mutated
    pool: PositiveInt = 1,
    hidden: NonNegativeInt = 0,
) -> None:
    """Classifier exits after the given blocks; train with `objective: early_exit`; `mlrun eval` sweeps thresholds.

    Args:
        after: indices of the blocks (model.blocks) to put an exit after, e.g. [0, 1].
        weights: loss weight of each exit and then of the final head (default 1 each).
        thresholds: softmax confidences at which a sample leaves, evaluated by `mlrun eval`.
        pool: image exits average-pool feature maps to pool x pool before the classifier.
        hidden: width of a hidden layer in each exit classifier (0: a single linear layer).
    """
    blocks = declared_blocks(model)
    if not after or sorted(set(after)) != list(after) or after[-1] >= len(blocks) - 1:
        raise UsageError(
            f"technique early_exit: after must list increasing block indices below the last block "
            f"(0..{len(blocks) - 2}; the model has {len(blocks)} blocks and its own head ends the last), got {after}"
        )
    weights = list(weights) if weights is not None else [1.0] * (len(after) + 1)
    if len(weights) != len(after) + 1:
        raise UsageError(
            f"technique early_exit: weights needs {len(after) + 1} values (one per exit, then the final head)"
        )
    classes = final_classes(model)
    heads = [ExitHead(block_width(blocks[i], i), classes, pool, hidden) for i in after]
    model.exits = EarlyExits(model, list(after), weights, sorted(thresholds), heads)
    return None
