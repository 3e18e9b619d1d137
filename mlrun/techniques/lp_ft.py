"""LP-FT: fit the new head alone (a linear probe), then fine-tune everything, the body at a lower rate.

    techniques:
      - {name: lp_ft, probe: 1ep, body_lr_scale: 1.0, warmup: 5st}     # the defaults; needs init_from

Kumar et al. 2022 ("Fine-tuning can distort pretrained features"): a randomly initialised head sends
large, noisy gradients into the pretrained body and distorts its features in the first steps; fitting
the head first (the body frozen), then training the whole model, keeps them. Here the body's
parameters get their own optimizer groups at `body_lr_scale` times each group's lr (the schedule
scales them alike, so layer_decay and param_groups still apply), are frozen for the `probe` (without
a gradient, torch's optimizers skip them: no update, no weight decay, no state) and, once released,
ramp their lr linearly from 0 over `warmup` steps. The ramp is applied around each optimizer step
(step hooks), so no schedule or evaluation overwrites it. The phase and the step it began are saved
in checkpoints, so a resume continues exactly.

    mlrun train configs/finetune_digits_lpft.yaml
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from mlrun.callbacks import Callback
from mlrun.config.schema import Duration, DurationField, parse_duration
from mlrun.errors import UsageError
from mlrun.models.addressing import check_patterns, head_prefixes, matching
from mlrun.registry import techniques
from mlrun.techniques.freeze import single_process

# Defaults measured on digits transfer (scripts/bench/transfer.py --part lpft, RESULTS.md): the body
# at half the lr lost to plain fine-tuning there, so it keeps the full lr and is only warmed up.
# Durations, not strings: pydantic does not validate a default.
PROBE = Duration(1, "ep")
BODY_LR_SCALE = 1.0
WARMUP = Duration(5, "st")
# Marks the body's optimizer groups; a key of the group survives optimizer.load_state_dict, which
# replaces the group dicts (a resume, the dry run), so the groups are looked up at each step.
BODY_GROUP = "lp_ft_body"


class LinearProbeThenFineTune(Callback):
    """Body frozen until `probe` has passed; then it trains at its scaled lr, ramped over `warmup_steps`."""

    def __init__(self, body: list[nn.Parameter], probe: Duration, body_lr_scale: float, warmup_steps: int):
        self.body, self.probe = body, probe
        self.body_lr_scale, self.warmup_steps = body_lr_scale, warmup_steps
        self.head_count = 0  # the tensors the probe trains, counted once the optimizer is known
        self.released_at: int | None = None  # the optimizer step the body joined at
        self.step = 0  # optimizer steps taken, as the loop last said
        self._held: list[tuple[dict, Any]] = []

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Split every group into its head and body part (the body's lr scaled), freeze the body, hook the steps."""
        # Only what the optimizer steps: parameters techniques.freeze keeps frozen (left out of it) stay so,
        # without gradients computed for nothing after the probe.
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.body = [p for p in self.body if id(p) in stepped]
        if not self.body:  # techniques.freeze (listed after lp_ft) froze all of it
            raise UsageError("techniques.lp_ft: every body parameter is frozen (techniques.freeze), so none would join")
        body_ids = {id(p) for p in self.body}
        self.head_count = len(stepped - body_ids)
        groups = []
        for group in optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            head = [p for p in group["params"] if id(p) not in body_ids]
            body = [p for p in group["params"] if id(p) in body_ids]
            if head:
                groups.append({**settings, "params": head})
            if body:
                name = f"{group.get('name', 'group')} body"
                scaled = group["lr"] * self.body_lr_scale
                groups.append({**settings, "params": body, "lr": scaled, "name": name, BODY_GROUP: True})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        optimizer.register_step_pre_hook(self._ramp_body_lr)
        optimizer.register_step_post_hook(self._restore_body_lr)
        self._apply(None)  # the optimizer holds the body already; freeze it until the probe ends
        return optimizer

    def on_train_start(self, model: nn.Module) -> None:
        # Here, not when built: eval, export and predict build the optimizer too, and train nothing.
        print(
            f"mlrun: lp_ft: {self.head_count} head tensors train alone for {self.probe}, then "
            f"{len(self.body)} body tensors join",
            file=sys.stderr,
            flush=True,
        )

    def on_epoch_start(self, model: nn.Module, state: Any) -> None:
        self._follow(state)

    def on_step_end(self, model: nn.Module, state: Any) -> None:
        self._follow(state)

    def _follow(self, state: Any) -> None:
        self.step = state.step
        elapsed = state.epoch if self.probe.unit == "ep" else state.step
        if self.released_at is None and elapsed >= self.probe.count:
            self._apply(state.step)

    def _apply(self, released_at: int | None) -> None:
        for param in self.body:
            param.requires_grad_(released_at is not None)
        if released_at is not None and self.released_at is None:
            count = sum(p.numel() for p in self.body)
            print(
                f"mlrun: lp_ft: probe done at step {released_at}; the body ({count:,} parameters) trains at "
                f"{self.body_lr_scale:g} x lr, warmed up over {self.warmup_steps} steps",
                flush=True,
            )
        self.released_at = released_at

    def _ramp_body_lr(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Just before a step: the body's lr times the warm-up factor (1/warmup at the first body step)."""
        if self.released_at is None or not self.warmup_steps:
            return
        factor = min(1.0, (self.step - self.released_at + 1) / self.warmup_steps)
        self._held = [(group, group["lr"]) for group in optimizer.param_groups if group.get(BODY_GROUP)]
        for group, lr in self._held:
            group["lr"] = lr * factor

    def _restore_body_lr(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group, lr in self._held:
            group["lr"] = lr  # the schedule's value again: what checkpoints and the log see
        self._held = []

    def state_dict(self) -> dict[str, Any]:
        return {"released_at": self.released_at, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.released_at = None
        self._apply(state["released_at"])


def check_lp_ft_plan(config: Any, plan: Any, /, **settings: Any) -> None:
    """lp_ft fine-tunes a pretrained model, on one process, and its probe must leave steps for the fine-tuning."""
    single_process("techniques.lp_ft", plan)
    if config.init_from is None:
        raise UsageError(
            "techniques.lp_ft: fits a new head on a pretrained body, but init_from is not set; set "
            "init_from: {run: runs/<source>, exclude: ['head.*']} or remove lp_ft to train from scratch"
        )
    for spec in config.techniques:  # freeze by patterns (a lower block kept frozen) works beside it
        if spec.name == "freeze" and (spec.settings.get("but_head") or spec.settings.get("unfreeze_every")):
            raise UsageError(
                "techniques.lp_ft releases the body after its probe, and techniques.freeze with but_head or "
                "unfreeze_every freezes the whole body or releases it on its own schedule: use lp_ft to fit the "
                "head first, freeze {but_head: true} for a probe alone, or freeze {patterns: [...]} beside lp_ft "
                "to keep some layers frozen"
            )
    probe = parse_duration(settings.get("probe", PROBE))
    steps = probe.steps(plan.steps_per_epoch)
    if steps >= plan.total_steps:
        raise UsageError(
            f"techniques.lp_ft.probe: {probe} ({steps} optimizer steps) is not shorter than the run "
            f"({plan.total_steps} steps, {plan.steps_per_epoch} an epoch), so the body would never train; "
            "shorten the probe or train longer"
        )
    warmup = settings.get("warmup", WARMUP)
    warmup = parse_duration(warmup) if warmup is not None else None
    if warmup is not None and warmup.unit == "st" and warmup.count > plan.total_steps - steps:
        print(  # said, not refused: a short smoke run of a real config is legitimate
            f"mlrun: warning: techniques.lp_ft.warmup: {warmup} is longer than the {plan.total_steps - steps} steps "
            "after the probe, so the body never reaches its lr",
            file=sys.stderr,
            flush=True,
        )


@techniques.register("lp_ft", check_plan=check_lp_ft_plan, chooses_trainable=True)
def lp_ft(
    model: nn.Module,
    /,
    *,
    probe: DurationField = PROBE,
    body_lr_scale: Annotated[float, Field(gt=0.0, le=1.0)] = BODY_LR_SCALE,
    warmup: DurationField | None = WARMUP,
    head: list[str] = [],  # noqa: B006 - never mutated
) -> LinearProbeThenFineTune:
    """Linear probe, then fine-tuning (Kumar et al. 2022): the head alone first, then all, the body warmed up.

    Args:
        probe: how long only the head trains ('3ep' epochs or '20st' optimizer steps); must end before the run.
        body_lr_scale: the body's lr as a fraction of each group's lr (the head keeps it) once the probe ends.
        warmup: optimizer steps ('5st') over which the body's lr rises linearly from 0 after the probe; null: none.
        head: glob patterns of the parameters trained in the probe; default the output layer (head, classifier, fc).
    """
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    if head:
        check_patterns(names, head, "techniques.lp_ft.head")
        head_names = set(matching(names, head))
    else:
        head_names = {n for n in names if n.startswith(head_prefixes(model))}
    params = dict(model.named_parameters())
    body = [params[n] for n in names if n not in head_names]
    if not body:
        raise UsageError("techniques.lp_ft: every trainable parameter is in the head, so there is no body to fine-tune")
    if warmup is not None and warmup.unit == "ep":
        raise UsageError(f"techniques.lp_ft.warmup: give it in optimizer steps ('{warmup.count}st'), not epochs")
    return LinearProbeThenFineTune(body, probe, body_lr_scale, warmup.count if warmup else 0)
