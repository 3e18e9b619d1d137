"""A study continued with what its trials were run with, so that they stay comparable.

A rerun of `mlrun tune` continues the study of the same name (more trials, a resumed search). Its trials
are ranked against each other, so a rerun may change how the next trials are chosen (`tune.trials`,
the sampler, the pruner, a float or int range) but not what a trial is:

- the scoring (`tune.value`, `tune.metric`, `tune.direction`);
- the config a trial trains with (every key outside `tune` and the searched keys: more epochs or
  another dataset would make later trials incomparable with earlier ones); for a compress search,
  the `compress:` chain outside the searched keys and the trained weights it starts from (a retrained run);
- a categorical key's choices, or a key's kind (Optuna cannot change them within a study).

A rerun that changes one exits 2 naming the difference, before any trial; another study (`--study
NAME`) takes the new config. A study from before this check records its config on its next run.
"""

from __future__ import annotations

import json

from mlrun.config.schema import ExperimentConfig
from mlrun.engine.config_change import describe, diff_configs
from mlrun.errors import UsageError
from mlrun.tuning.space import encode

# Keys that do not change what a trial is: where results go and how they are tracked.
_NOT_DEFINING = ("tune", "tracking", "output_dir", "name")


def check_continuation(study, config: ExperimentConfig, trained_weights: str | None = None) -> None:
    """Exit 2 when `config` would continue `study` with trials unlike its own; record what defines them.

    `trained_weights`: a compress search's starting weights (path, size, time), which its trials start from."""
    tune = config.tune
    compress_search = trained_weights is not None
    if not compress_search:
        check_scoring(study, tune)
    check_space_kinds(study, tune.space)
    defining = trial_defining(config, compress_search)
    if compress_search:
        defining["trained weights"] = trained_weights
    recorded = study.user_attrs.get("config")
    if recorded is not None:
        searched = set(tune.space) | {key for trial in study.get_trials(deepcopy=False) for key in trial.params}
        changes = {
            key: change
            for key, change in diff_configs(json.loads(recorded), defining).items()
            if not any(key == s or key.startswith(f"{s}.") for s in searched)
        }
        if changes:
            raise UsageError(
                f"study '{study.study_name}' ran its trials with another config, and these trials would be "
                f"ranked with them:\n{describe(changes)}\nRestore those values, or start another study with "
                "the new ones (--study NAME, or another name=...)"
            )
    study.set_user_attr("config", json.dumps(defining))


def trial_defining(config: ExperimentConfig, compress_search: bool) -> dict:
    """The part of the config a trial is made of: the chain for a compress search, else all but tune."""
    data = config.model_dump(mode="json")
    if compress_search:  # keyed by stage index, as the searched keys are (compress.0.sparsity)
        return {"compress": {str(index): stage for index, stage in enumerate(data["compress"])}}
    return {key: value for key, value in data.items() if key not in (*_NOT_DEFINING, "compress")}


def check_scoring(study, tune) -> None:
    """Every trial of a study is scored the same way: a rerun with another tune.value is refused (a study
    from before tune.value existed scored its trials by their last evaluation)."""
    recorded = study.user_attrs.get("value", "last" if study.trials else None)
    if recorded is not None and recorded != tune.value:
        raise UsageError(
            f"tune.value: study '{study.study_name}' scored its trials by their {recorded} evaluation, and "
            f"tune.value: {tune.value} would mix two scorings in one study; keep tune.value: {recorded}, or "
            "start another study (--study NAME)"
        )
    study.set_user_attr("value", tune.value)
    metric = study.user_attrs.get("metric")
    if metric is not None and metric != tune.metric:
        raise UsageError(
            f"tune.metric: study '{study.study_name}' scored its trials by {metric}, and {tune.metric} would rank "
            f"other figures against them; keep tune.metric: {metric}, or start another study (--study NAME)"
        )
    study.set_user_attr("metric", tune.metric)
    direction = study.direction.name.lower()  # fixed when the study was made; Optuna ignores another
    if study.trials and direction != tune.direction:
        raise UsageError(
            f"tune.direction: study '{study.study_name}' was made to {direction} {tune.metric}, and Optuna keeps "
            f"that direction whatever tune.direction says; keep tune.direction: {direction}, or start another "
            "study (--study NAME)"
        )


def check_space_kinds(study, space) -> None:
    """A searched key keeps its kind, and a categorical key its choices, across the study's trials."""
    for trial in study.get_trials(deepcopy=False):
        for key, distribution in trial.distributions.items():
            if key not in space:
                continue
            spec, kind = space[key], type(distribution).__name__
            if spec.type == "categorical":
                old = list(getattr(distribution, "choices", ()))
                if kind != "CategoricalDistribution" or old != [encode(c) for c in spec.choices]:
                    raise UsageError(
                        f"tune.space.{key}: study '{study.study_name}' searched it as {_shown(distribution)}; "
                        "a study cannot change a categorical key's choices or kind (Optuna keeps one "
                        "distribution per key). Restore them, or start another study (--study NAME)"
                    )
            elif kind == "CategoricalDistribution" or (spec.type == "int") != (kind == "IntDistribution"):
                raise UsageError(
                    f"tune.space.{key}: study '{study.study_name}' searched it as {_shown(distribution)}, "
                    f"not as {spec.type}; restore it, or start another study (--study NAME)"
                )


def _shown(distribution) -> str:
    if hasattr(distribution, "choices"):
        return f"choices {list(distribution.choices)}"
    kind = "int" if type(distribution).__name__ == "IntDistribution" else "float"
    return f"{kind} {distribution.low}..{distribution.high}"
