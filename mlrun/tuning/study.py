"""Optuna study pieces from the `tune:` section: sampler, pruner, storage."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from mlrun.config.schema import PrunerConfig, SamplerConfig, TuneConfig
from mlrun.errors import UsageError
from mlrun.tuning.space import grid


def optuna_module():
    try:
        import optuna
    except ImportError:
        raise UsageError("mlrun tune needs optuna: pip install 'mlrun[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # mlrun prints its own line per trial
    logger = logging.getLogger("optuna.study._optimize")  # a filter sees only its own logger's records
    if not any(isinstance(f, DropTrialFailures) for f in logger.filters):
        logger.addFilter(DropTrialFailures())
    return optuna


class DropTrialFailures(logging.Filter):
    """Optuna's warning for a failed trial, with the error's traceback: mlrun's line for the trial names
    the error (a rejected combination, a diverged run), and the traceback is of mlrun's own code."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not re.match(r"Trial \d+ failed", record.getMessage())


def make_sampler(config: SamplerConfig, tune: TuneConfig):
    seed = config.seed
    if config.startup_trials is not None and config.name not in ("tpe", "gp", "cmaes"):
        raise UsageError(f"tune.sampler.startup_trials: only tpe, gp and cmaes have a random start, not {config.name}")
    if config.multivariate and config.name != "tpe":
        raise UsageError(f"tune.sampler.multivariate: only tpe has it, not {config.name}")
    if config.population_size is not None and config.name != "nsga2":
        raise UsageError(f"tune.sampler.population_size: only nsga2 has a population, not {config.name}")
    if "local_scale" in config.model_fields_set and not config.local_share:
        raise UsageError("tune.sampler.local_scale: sizes the steps of local trials; set local_share (e.g. 0.5) too")
    several_objectives = getattr(tune, "objectives", None) is not None
    if config.local_share and (config.name in ("grid", "nsga2") or several_objectives):
        raise UsageError(
            f"tune.sampler.local_share: local search needs one objective and a sampler that proposes "
            f"values, not {'tune.objectives' if several_objectives else config.name}; set it to 0"
        )
    if seed is None or config.name == "grid":
        # The grid sampler's seed shuffles the grid, and trial n visits the n-th point of that order:
        # one seed for every trial and process, or trials land on each other's points and leave gaps.
        sampler = _build_sampler(config, tune, seed)
    else:
        sampler = seeded_per_trial(lambda trial_seed: _build_sampler(config, tune, trial_seed), seed)
    if not config.local_share:
        return sampler
    from mlrun.tuning.local_search import around_best

    return around_best(sampler, config.local_share, config.local_scale, seed)


def _build_sampler(config: SamplerConfig, tune: TuneConfig, seed: int | None):
    samplers = optuna_module().samplers
    if config.name == "grid":
        return samplers.GridSampler(grid(tune.space), seed=seed)
    if config.name == "random":
        return samplers.RandomSampler(seed=seed)
    if config.name == "nsga2":
        population = {} if config.population_size is None else {"population_size": config.population_size}
        return samplers.NSGAIISampler(seed=seed, **population)
    startup = {} if config.startup_trials is None else {"n_startup_trials": config.startup_trials}
    if config.name == "tpe":
        # group=True lets multivariate TPE handle parameters that only some trials have. Optuna marks
        # both options experimental and warns at every study; the option is the user's explicit choice.
        joint = {"multivariate": True, "group": True} if config.multivariate else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna_module().exceptions.ExperimentalWarning)
            return samplers.TPESampler(seed=seed, **startup, **joint)
    if config.name == "gp":
        return samplers.GPSampler(seed=seed, **startup)
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise UsageError("tune.sampler: cmaes needs the cmaes package: pip install cmaes") from None
    return samplers.CmaEsSampler(seed=seed, **startup)


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number` of a study seeded `seed`: mixed from both, not `seed + number`, which
    would give study seed s + 1 the draws of study seed s shifted by one trial (repeats of a search
    with seeds 0, 1, 2 ... would share all but one of their trials)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def seeded_per_trial(build, seed: int):
    """A sampler that samples trial n with `build(trial_seed(seed, n))`.

    Processes sharing a study (two `mlrun tune` on one journal, `--workers`, SLURM copies) hold
    distinct trial numbers, which the storage hands out atomically, so with one configured seed they
    still never draw the same values; and a study rerun draws, trial by trial, what it drew before.
    The samplers keep what they learn in the study's storage, so a fresh one per trial loses nothing.
    """

    from mlrun.tuning.forwarding import forwarding_sampler

    class SeededPerTrial(forwarding_sampler()):
        def __init__(self) -> None:
            self.inner = build(seed)

        def before_trial(self, study, trial) -> None:
            self.inner = build(trial_seed(seed, trial.number))
            self.inner.before_trial(study, trial)

        def __str__(self) -> str:
            return f"{self.inner} (seed {seed}, mixed with the trial number)"

    return SeededPerTrial()


def warn_small_generation(config: SamplerConfig, trials: int) -> str | None:
    """NSGA-II samples its whole first generation at random: a study of fewer trials is a random search."""
    if config.name != "nsga2":
        return None
    population = config.population_size or 50  # Optuna's default
    if trials >= 2 * population:
        return None
    return (
        f"tune.sampler: nsga2 breeds generations of {population}; with {trials} trials "
        f"{'every trial is in the first, random, generation' if trials <= population else 'it barely starts'}. "
        f"Set tune.sampler.population_size to about {max(2, trials // 5)} (or use tpe)."
    )


# Below this many trials Hyperband's brackets leave a sampler too few trials each (measured at 30).
SHORT_STUDY = 100


def warn_split_hyperband(sampler: SamplerConfig, pruner: PrunerConfig, trials: int) -> str | None:
    """Hyperband splits a study into brackets and Optuna shows a model-based sampler only the new
    trial's bracket: in a short study each model learns from a fraction of the trials."""
    if pruner.name != "hyperband" or sampler.name in ("random", "grid") or trials >= SHORT_STUDY:
        return None
    return (
        f"tune.pruner: hyperband splits {trials} trials into brackets and {sampler.name} sees only the new "
        "trial's bracket; in 30-trial searches the median rule saved more compute (README, Pruning): "
        "consider pruner: {name: median}"
    )


def warmup_steps(config: PrunerConfig) -> int:
    """Optuna's n_warmup_steps for `warmup_evaluations`: trials report from evaluation 1 and Optuna may
    prune at any step >= n_warmup_steps, so a warm-up of w evaluations first prunes at evaluation w + 1."""
    return config.warmup_evaluations + 1


def make_pruner(config: PrunerConfig, value: str = "last"):
    """Optuna's pruner for `tune.pruner`; `value` is tune.value (the curve rule credits a trial scored
    by its best evaluation with that evaluation)."""
    pruners = optuna_module().pruners
    if config.name == "none":
        return pruners.NopPruner()
    if config.name == "curve":
        from mlrun.tuning.curve_pruner import CurvePruner

        return CurvePruner(config.startup_trials, warmup_steps(config), config.gain_quantile, value == "best")
    if config.name == "median":
        return pruners.MedianPruner(n_startup_trials=config.startup_trials, n_warmup_steps=warmup_steps(config))
    if config.name == "percentile":
        return pruners.PercentilePruner(
            config.percentile, n_startup_trials=config.startup_trials, n_warmup_steps=warmup_steps(config)
        )
    rungs = {
        "min_resource": 1 if config.min_resource == "auto" else config.min_resource,
        "reduction_factor": config.reduction_factor,
    }
    if config.name == "successive_halving":
        return pruners.SuccessiveHalvingPruner(**rungs)
    if config.name == "hyperband":
        return pruners.HyperbandPruner(**rungs)
    with warnings.catch_warnings():  # experimental in Optuna, and warned at every study: the user's choice
        warnings.simplefilter("ignore", optuna_module().exceptions.ExperimentalWarning)
        return pruners.WilcoxonPruner()


def make_storage(url: str | None, tune_dir: Path, workers: int):
    """A journal file in the tune folder by default; PostgreSQL/MySQL URLs for many hosts; never SQLite in parallel."""
    optuna = optuna_module()
    if url is None or "://" not in url:
        path = Path(url) if url else tune_dir / "journal.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)
    if url.startswith("sqlite") and workers > 1:
        raise UsageError(
            "--storage: SQLite breaks under parallel workers (locking); use the default journal file "
            "on one host, or a PostgreSQL/MySQL URL across hosts"
        )
    from mlrun.tuning.storage import database_storage

    return database_storage(url), url
