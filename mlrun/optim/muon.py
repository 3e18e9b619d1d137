"""Muon (torch.optim.Muon) on the hidden 2-D weights, AdamW on everything else, as one optimizer.

Muon orthogonalises each weight matrix's momentum (Newton-Schulz) before the update; it is meant
for hidden layers only. Embeddings, the output layer, norms and biases take AdamW, as in Keller
Jordan's and Moonshot's recipes. Which parameters are "hidden" is one declared rule:

    default:     the weight of every nn.Linear except the output layer (models.addressing.HEAD_NAMES,
                 else the last Linear); embeddings are nn.Embedding, never Linear, so never Muon
    override:    optimizer.muon_params: ['blocks.*.weight']  (globs over parameter names)

Both run inside one torch.optim.Optimizer, so a checkpoint holds one optimizer state, the schedule
scales every group alike and `optimizer.param_groups` rules split Muon and AdamW groups as usual:

    mlrun train configs/quickstart.yaml optimizer={name: muon, lr: 3e-3} name=digits-muon
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from mlrun.errors import UsageError
from mlrun.models.addressing import check_patterns, head_prefix, matching
from mlrun.optim.optimizers import Beta, Betas
from mlrun.optim.param_groups import decay_groups
from mlrun.registry import optimizers


def muon_parameters(model: nn.Module, patterns: list[str] | None) -> set[int]:
    """id() of the trainable parameters Muon updates: `patterns` when given, else the hidden Linear weights."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if patterns:
        check_patterns([n for n, _ in named], patterns, "optimizer.muon_params")
        chosen = [(n, p) for n, p in named if matching([n], patterns)]
        wrong = [f"{n} {tuple(p.shape)}" for n, p in chosen if p.ndim != 2]
        if wrong:
            raise UsageError(
                f"optimizer.muon_params: Muon updates 2-D weight matrices only, but the patterns match "
                f"{', '.join(wrong[:5])}; narrow them (e.g. 'blocks.*.weight')"
            )
        return {id(p) for _, p in chosen}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        head = head_prefix(model)
    except UsageError:
        head = f"{linears[-1][0]}." if linears else ""  # no declared head: the last Linear is the output
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {
        id(m.weight)
        for n, m in linears
        if m.weight.requires_grad and not f"{n}.".startswith(head) and id(m.weight) not in embeddings
    }


def muon_state_bytes(model: nn.Module, settings: dict) -> int:
    """One fp32 momentum buffer per Muon element, AdamW's two moments per other element."""
    chosen = muon_parameters(model, settings.get("muon_params"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    return sum(4 * p.numel() * (1 if id(p) in chosen else 2) for p in trainable)


class MuonAdamW(torch.optim.Optimizer):
    """Groups tagged `algorithm: muon` step with torch.optim.Muon, the rest with torch.optim.AdamW.

    The two torch optimizers are used as step engines over this optimizer's own groups and state
    (distinct parameters, distinct state keys), so state_dict/load_state_dict are the base class's
    and exact resume needs nothing of its own. Each group carries every key its engine reads.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon: dict, adamw: dict):
        # Built first so that each fills its defaults (momentum, ns_steps; betas, amsgrad...) into the groups.
        self._engines = {}
        if muon_groups:
            self._engines["muon"] = torch.optim.Muon(muon_groups, **muon)
        if adamw_groups:
            self._engines["adamw"] = torch.optim.AdamW(adamw_groups, **adamw)
        for group in muon_groups:
            group["algorithm"] = "muon"
        for group in adamw_groups:
            group["algorithm"] = "adamw"
        super().__init__([*muon_groups, *adamw_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for algorithm, engine in self._engines.items():
            # The current groups (param_groups rules may have split them) and the shared state.
            engine.param_groups = [g for g in self.param_groups if g["algorithm"] == algorithm]
            engine.state = self.state
            engine.step()
        return loss


# whole_matrices: its update of a 2-D weight needs the whole matrix; on FSDP's shards it differed from one
# process and DDP (a user trial: 4.7% of one layer's first update), so the engine refuses that pairing.
@optimizers.register("muon", state_bytes=muon_state_bytes, whole_matrices=True)
def muon(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 1e-3,
    muon_lr: PositiveFloat | None = None,
    momentum: Beta = 0.95,
    nesterov: bool = True,
    ns_steps: PositiveInt = 5,
    adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw",
    betas: Betas = (0.9, 0.95),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.01,
    muon_params: list[str] | None = None,
) -> torch.optim.Optimizer:
    """Muon (torch core) on the hidden 2-D weights, AdamW on embeddings, the head, norms and biases.

    Args:
        lr: AdamW's learning rate, and Muon's unless muon_lr is set.
        muon_lr: Muon's learning rate; default lr (with adjust_lr match_rms_adamw, AdamW's lr carries over).
        momentum: Muon's momentum.
        nesterov: Nesterov momentum in Muon.
        ns_steps: Newton-Schulz iterations per Muon update.
        adjust_lr: match_rms_adamw (Moonshot: reuses AdamW's lr) or original (Keller Jordan: muon_lr ~0.02).
        betas: AdamW's moment decay rates.
        eps: AdamW's denominator term.
        weight_decay: decoupled weight decay of the Muon matrices and AdamW's weight matrices (not biases or norms).
        muon_params: globs of the (2-D) parameters Muon updates; default every Linear weight but the head's.
    """
    if not hasattr(torch.optim, "Muon"):
        raise UsageError(f"optimizer 'muon' needs torch.optim.Muon (torch >= 2.9); this torch is {torch.__version__}")
    chosen = muon_parameters(model, muon_params)
    trainable = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    on_muon = [p for p in trainable if id(p) in chosen]
    muon_groups = [{"params": on_muon, "weight_decay": weight_decay, "name": "muon"}] if on_muon else []
    adamw_groups = decay_groups([p for p in trainable if id(p) not in chosen], weight_decay)
    settings_muon = {
        "lr": muon_lr or lr,
        "momentum": momentum,
        "nesterov": nesterov,
        "ns_steps": ns_steps,
        "adjust_lr_fn": adjust_lr,
    }
    return MuonAdamW(muon_groups, adamw_groups, settings_muon, {"lr": lr, "betas": betas, "eps": eps})
