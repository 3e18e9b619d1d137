"""Local search around the best trial: a share of trials drawn near the best one so far.

    tune:
      sampler: {name: tpe, local_share: 0.5, local_scale: 0.15}

A model-based sampler (TPE, GP) spreads its proposals over the whole space, and with a handful of
finished trials in a wide space most proposals are far from anything good. PriorBand (Mallik et al.
2023) and πBO (Hvarfner et al. 2022) draw part of a search from a distribution around a known good
point, at first the user's own config and later the incumbent, and reach good values with a fraction
of the budget. This wrapper is that idea in its simplest form, on top of any single-objective Optuna
sampler:

- before each trial, a draw seeded by the trial decides whether it is local (probability
  `local_share`); the first trial is the config's own values (`tune.enqueue_config`), so until a
  better one finishes, "the best" is the user's config, as PriorBand's prior;
- a local trial copies the best completed trial's values and perturbs each: a number moves by a
  Gaussian step of `local_scale` of its range (in log space for `log: true` parameters), reflected at
  the bounds and rounded to its step; a choice is re-drawn among the others with probability
  `local_scale`;
- every other trial, and every trial before one has completed, is the wrapped sampler's.

Under the Hyperband pruner Optuna hands every sampler a view of the new trial's bracket only, so
"the best" is the best of that bracket: a local trial can step from a trial that is not the study's
best (its line says which: `near trial 2`). The benchmark figures were measured so.

Optuna ships no such sampler (OptunaHub's are downloaded from GitHub at run time, which clusters
without internet cannot do), so this is ours; it is a few lines on `BaseSampler`.
"""

from __future__ import annotations

import math

import numpy as np

NEAR_TRIAL = "mlrun:near_trial"  # system attr of a local trial: the number of the trial it stepped from


def around_best(inner, share: float, scale: float, seed: int | None):
    """`inner` with a `share` of its trials replaced by perturbations of the best completed trial."""
    from mlrun.tuning.forwarding import forwarding_sampler

    class LocalAroundBest(forwarding_sampler()):
        def __init__(self) -> None:
            self.inner = inner
            self.rng = np.random.default_rng(seed)
            self.best = None  # the best completed trial while the current trial is local

        def before_trial(self, study, trial) -> None:
            self.inner.before_trial(study, trial)
            self.rng = np.random.default_rng(None if seed is None else [seed, trial.number])
            self.best = None
            if self.rng.random() < share and "fixed_params" not in trial.system_attrs:  # not an enqueued trial
                self.best = _best_trial(study)
            if self.best is not None:  # recorded as Optuna's own samplers record theirs (NSGA-II's generation)
                study._storage.set_trial_system_attr(trial._trial_id, NEAR_TRIAL, self.best.number)

        def infer_relative_search_space(self, study, trial):
            return {} if self.best is not None else self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return {} if self.best is not None else self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            # A parameter the best trial lacks, or drew from another range (a space changed on resume)
            if self.best is None or self.best.distributions.get(param_name) != param_distribution:
                return self.inner.sample_independent(study, trial, param_name, param_distribution)
            return perturb(self.best.params[param_name], param_distribution, scale, self.rng)

        def __str__(self) -> str:
            return f"{self.inner}, {share:.0%} of trials near the best (scale {scale})"

    return LocalAroundBest()


def _best_trial(study):
    """The best completed trial, or None before any trial completed (single objective)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(done, key=lambda t: t.value)


def perturb(value, distribution, scale: float, rng: np.random.Generator):
    """`value` moved by a step of `scale` of the distribution's range, kept inside it."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        others = [c for c in distribution.choices if c != value]
        if others and rng.random() < scale:
            return others[rng.integers(len(others))]
        return value
    low, high = distribution.low, distribution.high
    if low == high:
        return value
    # Steps are taken on the unit interval of the range, in log space for log parameters.
    to_space, from_space = (math.log, math.exp) if distribution.log else (float, float)
    lo, hi = to_space(low), to_space(high)
    unit = (to_space(value) - lo) / (hi - lo) + rng.normal(0.0, scale)
    unit = abs(unit) % 2.0  # reflect at 0 and 1: a step past a bound comes back inside
    unit = 2.0 - unit if unit > 1.0 else unit
    moved = from_space(lo + unit * (hi - lo))
    step = getattr(distribution, "step", None)
    if step is not None:
        moved = low + round((moved - low) / step) * step
    moved = min(max(moved, low), high)
    return int(round(moved)) if isinstance(distribution, IntDistribution) else float(moved)
