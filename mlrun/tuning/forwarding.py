"""A sampler wrapper's base: every Optuna sampler call handed to the wrapped sampler."""

from __future__ import annotations


def forwarding_sampler():
    """A BaseSampler subclass that hands every call to `self.inner`: wrappers override what they change."""
    from optuna.samplers import BaseSampler

    class Forwarding(BaseSampler):
        inner = None  # the wrapped sampler, set by the subclass

        def before_trial(self, study, trial) -> None:
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

    return Forwarding
