"""Reading a range test's curve: where the smoothed loss falls fastest, where it is lowest, where it blew up.

`suggest` turns (lr, loss) pairs into a rate and its reason, or into no rate and what to change (a curve
too flat or too short to judge). `mlrun.tuning.lr_range` runs the sweep and calls it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DIVERGED = 4.0  # the smoothed loss above 4x its minimum: the rate is past the useful range

MIN_POINTS = 5  # steps the smoothed loss needs before its minimum for a slope to mean anything
MIN_FALL = 0.02  # the smoothed loss must fall by 2% of its start before its minimum to show a useful range


@dataclass
class Suggestion:
    """What `suggest` read from a curve: a rate (or none) with its reason, and the curve's landmarks."""

    lr: float | None  # None: the curve is too short or too flat to judge; `reason` says what to change
    method: str | None
    reason: str
    steepest_lr: float | None
    min_loss_lr: float
    min10_lr: float | None  # a tenth of min_loss_lr; None when that lies below the sweep (never measured)
    diverged_at_lr: float | None
    read_until_lr: float  # the last point of the curve read: the blow-up after it is left out


def smooth(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (the first values are not pulled towards 0)."""
    out, average = [], 0.0
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


def smooth_centred(losses: list[float], beta: float) -> list[float]:
    """The EMA run forwards, then backwards: as smooth, without the forward pass's lag to higher rates.

    The sweep is over when this is read, so the smoothing may look ahead (DivergenceStop cannot).
    """
    return smooth(smooth(losses, beta)[::-1], beta)[::-1]


def suggest(lrs: list[float], losses: list[float], beta: float, method: str = "steepest") -> Suggestion:
    """A learning rate inside the sweep: the steepest fall of the smoothed loss, or a tenth of its minimum.

    Only the curve before the blow-up is read: smoothed backwards, a loss spike hundreds of times
    the minimum would smear over the falling part and pull the minimum towards the sweep's start.
    A curve that is too short or too flat to judge gives no rate (lr None) and says what to change.
    """
    finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    lrs, losses = [lrs[i] for i in finite], [losses[i] for i in finite]
    # Divergence as DivergenceStop saw it (the causal average), so it agrees with where the sweep stopped.
    causal = smooth(losses, beta)
    low = min(range(len(causal)), key=causal.__getitem__)
    diverged = next((i for i in range(low, len(causal)) if causal[i] > DIVERGED * causal[low]), None)
    # The raw loss leaves the range a few steps before the lagging average says so: read up to there.
    cut = next((i for i in range(low, len(losses)) if losses[i] > DIVERGED * causal[low]), len(losses))
    smoothed = smooth_centred(losses[: max(cut, 1)], beta)
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    # Slope per decade of lr, up to the minimum; the first points are skipped: the EMA is still warming up.
    skip = max(1, min(len(smoothed) // 10, best))
    slopes = [
        (smoothed[i + 1] - smoothed[i - 1]) / (math.log10(lrs[i + 1]) - math.log10(lrs[i - 1]))
        for i in range(skip, best)
    ]
    steep = skip + min(range(len(slopes)), key=slopes.__getitem__) if slopes else None
    min10 = lrs[best] / 10
    where = f"the smoothed loss is lowest ({smoothed[best]:.4g}) at lr {lrs[best]:.3g}"
    blow = f"; the loss blew up ({DIVERGED:g}x its minimum) at lr {lrs[diverged]:.3g}" if diverged is not None else ""
    lr, used = None, None
    unreadable = why_unreadable(smoothed, best, lrs[len(smoothed) - 1], where, blow)
    if unreadable:  # too flat or too short: no rate
        reason = unreadable
    elif method == "steepest" and steep is not None and slopes[steep - skip] < 0:
        reason = (
            f"the smoothed loss falls fastest at lr {lrs[steep]:.3g} "
            f"({slopes[steep - skip]:.3g} per tenfold increase); {where}{blow}"
        )
        lr, used = lrs[steep], "steepest"
    elif min10 >= lrs[0]:
        why = "" if method == "min10" else "the loss never fell before its minimum, so "
        reason = f"{why}{where}{blow}; a tenth of that rate is {min10:.3g}, safely below the blow-up"
        lr, used = min10, "min10"
    else:
        reason = f"{where}{blow}; a tenth of that rate ({min10:.3g}) lies below the sweep: lower --start"
    return Suggestion(
        lr=lr,
        method=used,
        reason=reason,
        steepest_lr=lrs[steep] if steep is not None else None,
        min_loss_lr=lrs[best],
        min10_lr=min10 if min10 >= lrs[0] else None,
        diverged_at_lr=lrs[diverged] if diverged is not None else None,
        read_until_lr=lrs[len(smoothed) - 1],
    )


def why_unreadable(smoothed: list[float], best: int, last_lr: float, where: str, blow: str) -> str | None:
    """Why the smoothed curve (lowest at index `best`) cannot be judged and what to change; None if it can."""
    scale = max(abs(smoothed[0]), 1e-12)
    fall = (smoothed[0] - smoothed[best]) / scale
    # How far the smoothed loss ever moves from its start: on a flat curve, noise alone puts the minimum
    # anywhere, often in the first steps, which must not read as "too short" (a lower --start is flatter still).
    moved = max(abs(v - smoothed[0]) for v in smoothed) / scale
    if moved < MIN_FALL:
        return (
            f"too flat to judge: the smoothed loss stayed within {100 * moved:.2g}% of {smoothed[0]:.4g} over the "
            f"whole sweep (up to lr {last_lr:.3g}); sweep to a higher rate (--end) or for more steps (--steps)"
        )
    if best < MIN_POINTS:
        return (
            f"too short to judge: {where}, step {best + 1} of the sweep{blow}; start the sweep lower "
            "(--start) or give it more steps (--steps)"
        )
    if fall < MIN_FALL:
        return (
            f"too flat to judge: the smoothed loss fell only {100 * fall:.2g}% (from {smoothed[0]:.4g}) "
            f"before its minimum; {where}{blow}; "
            # A higher --end cannot help a curve that already blew up: only more steps resolve its short fall.
            + ("give it more steps (--steps)" if blow else "sweep to a higher rate (--end) or for more steps (--steps)")
        )
    return None
