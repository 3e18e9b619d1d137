"""Freeze parameters: by glob pattern, or everything but the head; optionally unfreeze gradually (ULMFiT).

    techniques:
      - {name: freeze, patterns: ["blocks.0.*", "embed.*"]}      # fixed for the whole run
      - {name: freeze, but_head: true, unfreeze_every: 1ep}      # head first, then one block an epoch

A fixed freeze sets requires_grad False before the optimizer is built, so frozen parameters are
left out of it and stay bit-identical. Gradual unfreezing (Howard & Ruder 2018) releases the
frozen parameters from the top: the last block, then the one below, ..., then everything else
(embeddings, stem). Those parameters join the optimizer at build time and are frozen right after:
without a gradient, torch's optimizers skip them entirely (no update, no weight decay, no state)
until they are released. The stage follows the loop's epoch or step, so a resume restores it.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from mlrun.callbacks import Callback
from mlrun.config.schema import Duration, DurationField, parse_duration
from mlrun.errors import UsageError
from mlrun.models.addressing import block_index, check_patterns, head_prefixes, matching
from mlrun.registry import techniques


class GradualUnfreeze(Callback):
    """Unit k (0 = the top block) is released once `every` has passed k + 1 times."""

    def __init__(self, units: list[list[nn.Parameter]], every: Duration):
        self.units, self.every = units, every
        self.stage = 0  # units released so far

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        # The optimizer now holds every parameter that will ever train; freeze the waiting ones.
        self._apply(0)
        return optimizer

    def on_epoch_start(self, model: nn.Module, state: Any) -> None:
        self._apply(self._stage_at(state))

    def on_step_end(self, model: nn.Module, state: Any) -> None:
        self._apply(self._stage_at(state))

    def _stage_at(self, state: Any) -> int:
        elapsed = state.epoch if self.every.unit == "ep" else state.step
        return min(len(self.units), elapsed // self.every.count)

    def _apply(self, stage: int) -> None:
        for index, unit in enumerate(self.units):
            for param in unit:
                param.requires_grad_(index < stage)
        if stage != self.stage and stage > 0:
            count = sum(p.numel() for unit in self.units[:stage] for p in unit)
            print(f"mlrun: freeze: released {stage}/{len(self.units)} groups ({count:,} parameters train)", flush=True)
        self.stage = stage

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._apply(state["stage"])


def single_process(what: str, plan: Any) -> None:
    """Exit 2 under several processes: parameters released mid-run train on one process, but DDP and FSDP
    fix at wrap time which parameters they synchronise, so each process would drift apart (a user trial
    measured 0.425 against 0.514 accuracy with no error)."""
    if plan.processes > 1:
        raise UsageError(
            f"{what}: releases frozen parameters during the run, which DDP and FSDP do not synchronise (they fix "
            f"the trained parameters when they wrap the model); run it on one process, or freeze without a release"
        )


def check_freeze_plan(config: Any, plan: Any, /, **settings: Any) -> None:
    """Gradual unfreezing that releases nothing within the run is a plain freeze in disguise: said, not refused
    (a short smoke run of a real config is legitimate)."""
    every = settings.get("unfreeze_every")
    if every is None:
        return
    single_process("techniques.freeze.unfreeze_every", plan)
    every = parse_duration(every)
    steps = every.steps(plan.steps_per_epoch)
    if steps >= plan.total_steps:
        print(
            f"mlrun: warning: techniques.freeze.unfreeze_every: {every} ({steps} optimizer steps) is not shorter "
            f"than the run ({plan.total_steps} steps), so nothing is released: a fixed freeze",
            file=sys.stderr,
            flush=True,
        )


@techniques.register("freeze", check_plan=check_freeze_plan, chooses_trainable=True)
def freeze(
    model: nn.Module,
    /,
    *,
    patterns: list[str] = [],  # noqa: B006 - never mutated
    but_head: bool = False,
    keep: list[str] = [],  # noqa: B006 - never mutated
    unfreeze_every: DurationField | None = None,
) -> Callback | None:
    """Freeze parameters by name; with unfreeze_every, release them from the top block down (ULMFiT).

    Args:
        patterns: glob patterns of parameter names to freeze, e.g. ['blocks.0.*', 'embed.*'].
        but_head: freeze every parameter except the output layer's (head, classifier, score, lm_head or fc).
        keep: glob patterns of parameters never frozen (applied after patterns and but_head).
        unfreeze_every: release one more group every '1ep' or 'Nst': the top block first, the rest last.
    """
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    check_patterns(names, [*patterns, *keep], "techniques.freeze")
    if not patterns and not but_head:
        raise UsageError("techniques.freeze: name what to freeze with patterns: [...] or but_head: true")
    chosen = set(matching(names, patterns))
    if but_head:
        chosen |= {n for n in names if not n.startswith(head_prefixes(model))}
    chosen -= set(matching(names, keep))
    if not chosen:
        raise UsageError("techniques.freeze: the patterns leave nothing to freeze")
    params = dict(model.named_parameters())
    frozen = [params[n] for n in names if n in chosen]
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    count = sum(p.numel() for p in frozen)
    print(
        f"mlrun: freeze: {count:,} of {total:,} trainable parameters frozen ({len(frozen)} tensors)",
        file=sys.stderr,
        flush=True,
    )
    if unfreeze_every is None:
        for param in frozen:
            param.requires_grad_(False)  # before the optimizer is built: it leaves them out
        return None
    return GradualUnfreeze(release_order(model, frozen), unfreeze_every)


def release_order(model: nn.Module, frozen: list[nn.Parameter]) -> list[list[nn.Parameter]]:
    """Frozen parameters in groups, top block first, then whatever is outside the blocks."""
    where = block_index(model)
    blocks = max(where.values(), default=-1) + 1
    units: list[list[nn.Parameter]] = [[] for _ in range(blocks)]
    rest = []
    for param in frozen:
        (units[where[id(param)]] if id(param) in where else rest).append(param)
    ordered = [unit for unit in reversed(units) if unit]
    return ordered + ([rest] if rest else [])
