"""`pruner: {name: curve}`: stop a trial that its learning curve says cannot reach the best trial.

At each evaluation the running trial is credited with the largest gain (or `gain_quantile` of the
gains) that the study's finished trials made from that same evaluation to their end, and it stops
when even then it would finish short of the best finished trial. The median rule and successive
halving rank trials by where they stand at an evaluation, so a slow starter that would end best is
stopped; this rule asks where a trial could still end, the question of learning-curve extrapolation
(Domhan et al. 2015; Swersky et al.'s freeze-thaw). Those fit parametric curves, which a 30-trial
search of noisy evaluations cannot fit; here the finished trials' own curves are the model, so the
extrapolation needs no fit and grows more confident as trials finish.

Optuna ships no learning-curve pruner (MedianPruner, PercentilePruner, SuccessiveHalving, Hyperband,
Threshold, Patient, Wilcoxon all compare values at a step), so it is an Optuna BasePruner of our own.
"""

from __future__ import annotations

import math

import numpy as np
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState


class CurvePruner(BasePruner):
    """Prunes when value + gain_quantile(finished trials' gains from this evaluation) < the best value.

    `from_best`: trials are scored by their best evaluation (tune.value: best), so a running trial
    is credited with its best evaluation so far when that is higher than its extrapolation.
    """

    def __init__(self, startup_trials: int, warmup_steps: int, gain_quantile: float, from_best: bool):
        self.startup_trials, self.warmup_steps = startup_trials, warmup_steps
        self.gain_quantile, self.from_best = gain_quantile, from_best

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        if step is None or step < self.warmup_steps:
            return False
        finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _finite(t.value)]
        if len(finished) < max(1, self.startup_trials):
            return False
        # Signs turn a minimised figure into one to maximise, so one comparison serves both directions.
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        value = sign * trial.intermediate_values[step]
        if not math.isfinite(value):
            return True  # a diverged trial does not come back
        # Only trials that went on past this evaluation say what is still to gain; at the last one
        # nothing is left to save, and a trial stopped there would lose its finished value.
        gains = [
            sign * t.value - sign * t.intermediate_values[step]
            for t in finished
            if _finite(t.intermediate_values.get(step)) and max(t.intermediate_values) > step
        ]
        if not gains:
            return False
        reach = value + float(np.quantile(gains, self.gain_quantile))
        if self.from_best:
            reach = max(reach, *(sign * v for v in trial.intermediate_values.values() if _finite(v)))
        return reach < max(sign * t.value for t in finished)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)
