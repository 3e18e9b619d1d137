"""The experiment config: frozen pydantic models, one per section, a docstring on every field.

The docstrings are the user's reference: `mlrun schema` turns them into JSON Schema descriptions
and README's config reference lists them. Components (model, data, loss, metrics, optimizer,
scheduler, techniques, tracking) are `name` plus keyword settings; those settings are checked
against the registered function's signature in `mlrun.config.components`.

Import every name from here (`from mlrun.config.schema import TrainConfig`); each section lives in
its own module:

    base.py         Section, ComponentSpec (the two kinds of section), component_fields
    duration.py     Duration, parse_duration, DurationField ('3ep', '200st')
    experiment.py   ExperimentConfig: the root, one field per section below
    model.py        model: ModelSpec; init_from: InitFrom
    data.py         data: DataSpec (augment: AugmentSpec)
    objective.py    loss: LossSpec; objective: ObjectiveSpec; metrics: MetricSpec
    optimizer.py    optimizer: OptimizerSpec (param_groups: ParamGroupRule); scheduler: SchedulerSpec
    train.py        train: TrainConfig (best: Monitor; early_stopping: EarlyStopping)
    techniques.py   techniques: TechniqueSpec; compress: StageSpec
    tracking.py     tracking: TrackerSpec; energy: EnergyConfig
    distributed.py  distributed: DistributedConfig
    tune.py         tune: TuneConfig (space: ParamSpec; sampler: SamplerConfig; pruner: PrunerConfig;
                    pbt: PBTConfig)
"""

from mlrun.config.schema.base import ComponentSpec, Section, component_fields
from mlrun.config.schema.data import AugmentSpec, DataSpec
from mlrun.config.schema.distributed import DistributedConfig
from mlrun.config.schema.duration import Duration, DurationField, parse_duration
from mlrun.config.schema.experiment import ExperimentConfig
from mlrun.config.schema.model import InitFrom, ModelSpec
from mlrun.config.schema.objective import LossSpec, MetricSpec, ObjectiveSpec
from mlrun.config.schema.optimizer import OptimizerSpec, ParamGroupRule, SchedulerSpec
from mlrun.config.schema.techniques import StageSpec, TechniqueSpec
from mlrun.config.schema.tracking import EnergyConfig, TrackerSpec
from mlrun.config.schema.train import EarlyStopping, Monitor, TrainConfig
from mlrun.config.schema.tune import ParamSpec, PBTConfig, PrunerConfig, SamplerConfig, TuneConfig

__all__ = [
    "AugmentSpec",
    "ComponentSpec",
    "DataSpec",
    "DistributedConfig",
    "Duration",
    "DurationField",
    "EarlyStopping",
    "EnergyConfig",
    "ExperimentConfig",
    "InitFrom",
    "LossSpec",
    "MetricSpec",
    "ModelSpec",
    "Monitor",
    "ObjectiveSpec",
    "OptimizerSpec",
    "ParamGroupRule",
    "ParamSpec",
    "PBTConfig",
    "PrunerConfig",
    "SamplerConfig",
    "SchedulerSpec",
    "Section",
    "StageSpec",
    "TechniqueSpec",
    "TrackerSpec",
    "TrainConfig",
    "TuneConfig",
    "component_fields",
    "parse_duration",
]
