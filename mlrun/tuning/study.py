"""Optuna study pieces from the `tune:` section: sampler, pruner, storage."""

from __future__ import annotations

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
    return optuna


def make_sampler(config: SamplerConfig, tune: TuneConfig):
    samplers = optuna_module().samplers
    seed = config.seed
    if config.name == "grid":
        return samplers.GridSampler(grid(tune.space), seed=seed)
    if config.name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UsageError("tune.sampler: cmaes needs the cmaes package: pip install cmaes") from None
    factory = {
        "tpe": samplers.TPESampler,
        "random": samplers.RandomSampler,
        "cmaes": samplers.CmaEsSampler,
        "gp": samplers.GPSampler,
        "nsga2": samplers.NSGAIISampler,
    }[config.name]
    return factory(seed=seed)


def make_pruner(config: PrunerConfig):
    pruners = optuna_module().pruners
    if config.name == "none":
        return pruners.NopPruner()
    if config.name == "median":
        return pruners.MedianPruner(n_startup_trials=config.startup_trials, n_warmup_steps=config.warmup_steps)
    if config.name == "successive_halving":
        return pruners.SuccessiveHalvingPruner(
            min_resource=config.min_resource, reduction_factor=config.reduction_factor
        )
    if config.name == "hyperband":
        return pruners.HyperbandPruner(
            min_resource=1 if config.min_resource == "auto" else config.min_resource,
            reduction_factor=config.reduction_factor,
        )
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
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=60), url
    except ImportError as exc:
        raise UsageError(
            f"--storage {url}: the database driver is missing ({exc}); e.g. pip install psycopg2-binary or pymysql"
        ) from None
