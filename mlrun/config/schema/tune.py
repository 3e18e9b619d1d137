"""`tune`: the hyperparameter search of `mlrun tune`: searched keys (`space`), Optuna's sampler and pruner, or
population-based training (`strategy: pbt`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from mlrun.config.schema.base import Section, Seed


class ParamSpec(Section):
    """One searched key: a float or int range, or a list of choices."""

    type: Literal["float", "int", "categorical"]
    """float | int (a range from low to high) or categorical (one of choices)."""
    low: float | None = None
    """Lowest value of a float or int range."""
    high: float | None = None
    """Highest value of a float or int range (included)."""
    log: bool = False
    """Sample the range on a log scale (learning rates, weight decay)."""
    step: float | None = None
    """Spacing of the values in the range, e.g. 16 for batch sizes 16, 32, 48."""
    choices: list[Any] | None = None
    """The values of a categorical key; any YAML value, lists included."""

    @model_validator(mode="after")
    def _complete(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical key needs a non-empty `choices` list")
            if self.log or any(getattr(self, bound) is not None for bound in ("low", "high", "step")):
                raise ValueError("low, high, log and step are for float and int keys; a categorical key has choices")
            return self
        if self.choices is not None:
            raise ValueError(f"choices are for type: categorical; a {self.type} key is a range from low to high")
        missing = [bound for bound in ("low", "high") if getattr(self, bound) is None]
        if missing:
            raise ValueError(f"a {self.type} key needs {' and '.join(missing)}")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int key needs whole numbers for low, high and step")
        if self.low > self.high:
            raise ValueError(f"a {self.type} key needs low <= high (got {self.low} > {self.high})")
        if self.step is not None:
            self._check_step(self.high - self.low)
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        elif self.log and self.step:
            raise ValueError(
                "`step` and `log: true` cannot be combined (a range is sampled either on a log scale or on "
                "an even grid); for log-spaced grid values use type: categorical with choices: [...]"
            )
        return self

    def _check_step(self, span: float) -> None:
        """Every value is low + k x step up to high: a step of 0, one past the range or one that does not
        divide it was silently changed by Optuna (step 1, a range of one value, a lower high)."""
        if self.step <= 0 or (span > 0 and self.step > span):
            raise ValueError(f"step must be above 0 and at most high - low ({span:g}), got {self.step:g}")
        if span > 0 and abs(round(span / self.step) * self.step - span) > 1e-9 * max(1.0, abs(self.high)):
            raise ValueError(
                f"high - low ({span:g}) is not a whole number of steps ({self.step:g}), so Optuna would lower "
                "high; make high = low + k x step"
            )


class SamplerConfig(Section):
    name: Literal["tpe", "random", "grid", "cmaes", "gp", "nsga2"] = "tpe"
    """Optuna sampler: tpe | random | grid | cmaes | gp | nsga2."""
    seed: Seed | None = None
    """Seed of the sampler, for repeatable searches (0 to 2**32 - 1)."""
    startup_trials: NonNegativeInt | None = None
    """tpe / gp / cmaes: trials sampled at random before the model-based search starts (null:
    Optuna's default, 10 for tpe and gp). Small studies gain from fewer."""
    population_size: Annotated[int, Field(ge=2)] | None = None
    """nsga2: individuals per generation (null: Optuna's 50). The first generation is sampled at
    random, so a study needs several times this many trials to search; e.g. 10 for a 50-trial study."""
    multivariate: bool = False
    """tpe: model the parameters jointly (Optuna's multivariate TPE, with grouping of conditional
    parameters) instead of one at a time; usually better when parameters interact, such as lr and batch."""
    local_share: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Share of trials drawn near the best completed trial so far (at first the config's own values,
    tune.enqueue_config) instead of by the sampler: each number moved by a Gaussian step of
    `local_scale` of its range (log space for log parameters), each choice changed with probability
    `local_scale`. PriorBand-style local search; single-objective studies only."""
    local_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.15
    """Size of a local trial's step, as a share of each parameter's range (see local_share)."""


# Which pruners read each setting: setting one for another pruner is refused, not ignored.
PRUNER_SETTINGS = {
    "warmup_evaluations": ("median", "percentile", "curve"),
    "startup_trials": ("median", "percentile", "curve"),
    "percentile": ("percentile",),
    "gain_quantile": ("curve",),
    "min_resource": ("successive_halving", "hyperband"),
    "reduction_factor": ("successive_halving", "hyperband"),
}


class PrunerConfig(Section):
    name: Literal["none", "median", "percentile", "curve", "successive_halving", "hyperband", "wilcoxon"] = "median"
    """Stops hopeless trials at their evaluations: none | median | percentile | curve | successive_halving |
    hyperband | wilcoxon. Budgets count evaluations (`train.eval_every`); keep eval_every in epochs when batch size
    is searched."""
    warmup_evaluations: NonNegativeInt = 0
    """median / percentile / curve: evaluations a trial completes before it may be pruned."""
    startup_trials: NonNegativeInt = 2
    """median / percentile / curve: trials that finish before pruning starts."""
    percentile: Annotated[float, Field(gt=0.0, lt=100.0)] = 50.0
    """percentile: a trial goes on only while its best value so far lies in this top percentile of earlier trials'
    at the same evaluation, as Optuna's PercentilePruner (50: the median rule; 25 keeps the top quarter, so
    stops more trials; 75 stops fewer)."""
    gain_quantile: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """curve: a trial stops when its value plus this quantile of the gains the ended trials (finished or pruned)
    made from the same evaluation to their last, plus 1.645 times the spread of late evaluation-to-evaluation
    changes (the noise), cannot reach the best finished trial (learning-curve extrapolation from the study's own
    curves). 1.0 credits the largest gain
    (stops only trials no curve could rescue); 0.5 the median gain (stops more)."""
    min_resource: PositiveInt | Literal["auto"] = "auto"
    """hyperband / successive_halving: the evaluations every trial gets before it can be pruned (auto: 1)."""
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    """hyperband / successive_halving: 1 / reduction_factor of trials go on to the next rung."""

    @model_validator(mode="after")
    def _settings_of_this_pruner(self) -> PrunerConfig:
        # Set and not the default: a run's config.yaml records every setting, defaults included.
        for setting in sorted(self.model_fields_set & PRUNER_SETTINGS.keys()):
            if (
                self.name not in PRUNER_SETTINGS[setting]
                and getattr(self, setting) != type(self).model_fields[setting].default
            ):
                raise ValueError(
                    f"{setting} is a setting of {' and '.join(PRUNER_SETTINGS[setting])}, not of pruner '{self.name}': "
                    "remove it or choose that pruner"
                )
        return self


class PBTConfig(Section):
    """Population-based training: members train in rounds; the worst copy the best and perturb."""

    population: Annotated[int, Field(ge=2)] = 8
    """Members trained side by side."""
    rounds: PositiveInt = 5
    """Rounds; the run's train.max_steps is split evenly between them."""
    quantile: Annotated[float, Field(gt=0.0, le=0.5)] = 0.25
    """Share of the population replaced by copies of the best members after each round."""
    perturb: tuple[PositiveFloat, PositiveFloat] = (0.8, 1.2)
    """Factors a copied float or int hyperparameter is multiplied by (one chosen at random)."""
    resample_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    """Chance that a copied hyperparameter is sampled afresh instead of perturbed."""


# What population-based training does not read (it has its own population, rounds and draws).
OPTUNA_SETTINGS = ("trials", "timeout_s", "pruner", "storage", "objectives", "enqueue_config", "near_best")


class TuneConfig(Section):
    """Hyperparameter search over keys of this config (`mlrun tune`)."""

    metric: str = "val/loss"
    """Logged figure to optimise, e.g. val/accuracy."""
    direction: Literal["minimize", "maximize"] = "minimize"
    """Whether smaller (minimize) or larger (maximize) is better."""
    trials: PositiveInt = 20
    """Trials the study should hold when the command ends (a rerun continues to this number)."""
    timeout_s: PositiveFloat | None = None
    """Stop starting trials after this many seconds."""
    sampler: SamplerConfig = SamplerConfig()
    """How trial values are chosen."""
    pruner: PrunerConfig = PrunerConfig()
    """How hopeless trials are stopped early."""
    storage: str | None = None
    """Study storage: default a journal file in <run>/tune/; or a PostgreSQL/MySQL URL for many hosts."""
    space: dict[str, ParamSpec]
    """Searched keys: dotted config paths, e.g. optimizer.lr: {type: float, low: 1e-4, high: 1e-1, log: true}."""
    objectives: dict[str, Literal["minimize", "maximize"]] | None = None
    """A search for the best compressed model: each trial runs the `compress:` stages, with the space's
    `compress.<n>.<setting>` values, on the trained run, and is scored on these figures of its last stage
    (val/<metric>, file_bytes, huffman_bytes, latency_ms_b1, latency_ms_b64, macs, nonzero_parameters),
    e.g. {val/accuracy: maximize, file_bytes: minimize, latency_ms_b1: minimize}; the result is the
    Pareto front in tune/compress/. Leave metric and direction out: they are the training search's."""
    enqueue_config: bool = True
    """strategy optuna: run the config's own values of the space's keys as the first trial of a new study,
    when all lie inside the space (a good config then guides the sampler from the start); false: all sampled."""
    near_best: PositiveFloat = 0.005
    """strategy optuna: the end report counts the completed trials within this distance of the best value,
    in the metric's own units (0.005: half a point of a 0-1 figure such as accuracy)."""
    value: Literal["last", "best"] = "last"
    """strategy optuna: the figure a trial is ranked by: its last evaluation of `metric`, or its best one (as
    KerasTuner does), which with train.early_stopping makes a trial end, scored at its peak, once its curve
    flattens; set train.best on the same figure to keep those weights in the trial's best.safetensors. A study
    keeps the scoring it started with (a rerun with the other is refused)."""
    strategy: Literal["optuna", "pbt"] = "optuna"
    """optuna: independent trials; pbt: population-based training on mlrun checkpoints."""
    pbt: PBTConfig = PBTConfig()
    """Settings of strategy: pbt."""

    @model_validator(mode="after")
    def _value_of_a_training_search(self) -> TuneConfig:
        if self.value == "best" and (self.strategy == "pbt" or self.objectives is not None):
            raise ValueError(
                "value: best ranks the trials of a training search (strategy: optuna) by their best evaluation; "
                "population-based training and compress searches (objectives) score their own figures: remove it"
            )
        return self

    @model_validator(mode="after")
    def _settings_of_this_strategy(self) -> TuneConfig:
        # Set and not the default: a run's config.yaml records every setting, defaults included.
        if self.strategy == "optuna":
            if self.pbt != PBTConfig():
                raise ValueError("pbt: settings of strategy: pbt, which this search does not use: remove them")
            return self
        unread = [key for key in OPTUNA_SETTINGS if getattr(self, key) != type(self).model_fields[key].default]
        unread += [
            f"sampler.{key}"
            for key, field in SamplerConfig.model_fields.items()
            if key != "seed" and getattr(self.sampler, key) != field.default
        ]
        if unread:
            raise ValueError(
                f"{', '.join(unread)}: read by strategy: optuna, not by population-based training, which trains "
                "pbt.population members in pbt.rounds rounds and draws their values with sampler.seed: remove them "
                "(set by a base: file, set them back to their defaults)"
            )
        return self
