"""`pruner: {name: curve}`: stop a trial that its learning curve says cannot reach the best trial.

At each evaluation the running trial is credited with the largest gain (or `gain_quantile` of the
gains) that the study's ended trials, finished or pruned, made from that same evaluation to their
last, plus 1.645 times the spread of late evaluation-to-evaluation changes (the noise of a gain,
a difference of two evaluations), and it stops when even then it would end short of the best
finished trial. The median rule and successive halving rank trials by where they stand at
an evaluation, so a slow starter that would end best is stopped; this rule asks where a trial could
still end, the question of learning-curve extrapolation (Domhan et al. 2015; Swersky et al.'s
freeze-thaw). Those fit parametric curves, which a 30-trial search of noisy evaluations cannot fit;
here the study's own curves are the model, so the extrapolation needs no fit and grows more
confident as trials end. Measured on digits and breast cancer it saves less compute than the median
rule, which stays the default (scripts/bench/RESULTS.md, "A learning-curve pruner").

Optuna ships no learning-curve pruner (MedianPruner, PercentilePruner, SuccessiveHalving, Hyperband,
Threshold, Patient, Wilcoxon all compare values at a step), so it is an Optuna BasePruner of our own.
"""

from __future__ import annotations

import math

import numpy as np
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

# One-sided 5%: a trial stops when its chance of reaching the best, noise included, is below 1 in 20.
NOISE_Z = 1.645


class CurvePruner(BasePruner):
    """Prunes when value + gain_quantile(ended trials' gains from this evaluation) + noise < the best value.

    `from_best`: trials are scored by their best evaluation (tune.value: best), so a trial whose best
    evaluation so far already reaches the best finished trial goes on, whatever it reports now.
    """

    def __init__(self, startup_trials: int, warmup_steps: int, gain_quantile: float, from_best: bool):
        self.startup_trials, self.warmup_steps = startup_trials, warmup_steps
        self.gain_quantile, self.from_best = gain_quantile, from_best

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        if step is None or step < self.warmup_steps:
            return False
        ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        finished = [t for t in ended if t.state == TrialState.COMPLETE and _finite(t.value)]
        if len(finished) < max(1, self.startup_trials):
            return False
        # Signs turn a minimised figure into one to maximise, so one comparison serves both directions.
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        best = max(sign * t.value for t in finished)
        so_far = max((sign * v for v in trial.intermediate_values.values() if _finite(v)), default=-math.inf)
        if self.from_best and so_far >= best:  # scored by its best evaluation, it already ends best
            return False
        value = sign * trial.intermediate_values[step]
        if not math.isfinite(value):
            return True  # a diverged trial does not come back
        gains = [gain for t in ended if (gain := self._gain_after(t, step, sign)) is not None]
        # No ended trial went on past this evaluation: nothing says what is left to gain, and where
        # trials share one length (the usual search) this is the trial's last evaluation, where a stop
        # would only lose its value. Trials of searched lengths run on from here unpruned.
        if not gains:
            return False
        # Evaluations are noisy (a validation split of a hundred samples moves in steps of 1%), and
        # the gain is a difference of two of them: the spread of such differences, 1.645 times (a
        # one-sided 5% chance), is added to what the trial could reach.
        reach = value + float(np.quantile(gains, self.gain_quantile)) + NOISE_Z * _evaluation_noise(ended, sign)
        return reach < best

    def _gain_after(self, trial, step: int, sign: float) -> float | None:
        """What an ended (finished or pruned) `trial` gained after `step`, to its last (or best)
        evaluation. A pruned trial made its gain with fewer evaluations, a lower bound on what it would
        have made; it counts because slow starters are what a pruner stops, and only they show how far
        a slow start climbs. None when the trial did not go on past `step`."""
        curve = {s: sign * v for s, v in trial.intermediate_values.items() if _finite(v)}
        if step not in curve or max(curve) <= step:
            return None
        if self.from_best:  # its best evaluation after `step`; one before it is no gain from there
            end = max(v for s, v in curve.items() if s > step)
        else:  # its last evaluation (a finished trial's value)
            end = curve[max(curve)]
        return end - curve[step]


def _evaluation_noise(trials, sign: float) -> float:
    """The spread of one evaluation's change to the next late in the ended trials' curves, where
    learning has mostly flattened and what moves is noise (the second half of each curve; pruned
    trials count: a smooth finished curve or two would say there is none). A short pruned curve's
    second half may still be learning, which only makes the rule more cautious."""
    steps = []
    for trial in trials:
        curve = [sign * v for _, v in sorted(trial.intermediate_values.items()) if _finite(v)]
        late = curve[len(curve) // 2 :]
        steps += [after - before for before, after in zip(late, late[1:])]
    return float(np.std(steps)) if len(steps) >= 2 else 0.0


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)
