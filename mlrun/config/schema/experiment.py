"""`ExperimentConfig`: one experiment, the root of every config file, holding one field per section.

`mlrun validate <config>` loads and checks one; `mlrun schema` prints its JSON Schema.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from mlrun.config.schema.base import Section, Seed
from mlrun.config.schema.data import DataSpec
from mlrun.config.schema.distributed import DistributedConfig
from mlrun.config.schema.model import InitFrom, ModelSpec
from mlrun.config.schema.objective import LossSpec, MetricSpec, ObjectiveSpec
from mlrun.config.schema.optimizer import OptimizerSpec, SchedulerSpec
from mlrun.config.schema.techniques import StageSpec, TechniqueSpec
from mlrun.config.schema.tracking import EnergyConfig, TrackerSpec
from mlrun.config.schema.train import TrainConfig
from mlrun.config.schema.tune import TuneConfig


class ExperimentConfig(Section):
    """One experiment: everything `mlrun train` needs."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    """Run name; the run directory is <output_dir>/<name>."""
    seed: Seed = 0
    """Seed for every random number generator (python, numpy, torch, data order); 0 to 2**32 - 1."""
    output_dir: str = "runs"
    """Folder that holds run directories, relative to the working directory."""
    base: str | None = None
    """Path of a config this one extends (deep merge, lists replace); resolved before validation."""
    model: ModelSpec
    """The model: a registry name and its settings; input shape and classes come from the data."""
    data: DataSpec
    """The dataset and its loaders."""
    loss: LossSpec = LossSpec(name="cross_entropy")
    """The training loss: a registry name or {name: ..., settings}."""
    objective: ObjectiveSpec = ObjectiveSpec(name="supervised")
    """How a batch becomes a loss: supervised (loss of logits vs targets) | causal_lm (next token) | model_loss
    (the loss the model returns)."""
    metrics: list[MetricSpec] = []
    """Metrics computed at each evaluation, logged as val/<name>."""
    init_from: InitFrom | None = None
    """Pretrained start: {run: runs/x, checkpoint: best} | a .safetensors/.pt file | a save_pretrained folder."""
    optimizer: OptimizerSpec = OptimizerSpec(name="adamw")
    """The optimizer; weight decay skips biases and norm weights."""
    scheduler: SchedulerSpec = SchedulerSpec()
    """The learning-rate schedule, stepped once per optimizer step."""
    train: TrainConfig
    """Length, precision, accumulation, clipping, evaluation, logging and checkpoints."""
    techniques: list[TechniqueSpec] = []
    """Training and memory techniques applied to the model, e.g. activation_checkpointing, ema."""
    tracking: list[TrackerSpec] = [TrackerSpec(name="console")]
    """Where figures go besides metrics.jsonl (always written): console, tensorboard, wandb, mlflow."""
    distributed: DistributedConfig = DistributedConfig()
    """Data or model parallelism when launched as several processes."""
    tune: TuneConfig | None = None
    """Hyperparameter search settings, used by `mlrun tune` (ignored by `mlrun train`)."""
    energy: EnergyConfig = EnergyConfig()
    """Energy (kWh), carbon (g CO2) and energy per sample, measured during training and profiling."""
    compress: list[StageSpec] = []
    """Stages `mlrun compress` runs in order from the trained weights: prune, prune_structured, distill,
    qat, low_rank, fold_batchnorm, cluster (`mlrun list stages`)."""
    model_edits: list[dict[str, Any]] = []
    """Structural edits of the built model (pruned shapes, factorized layers, folded norms), recorded by
    `mlrun compress` in a stage's config.yaml and replayed when the model is built; not written by hand."""

    @field_validator("techniques")
    @classmethod
    def _each_technique_once(cls, techniques: list[TechniqueSpec]) -> list[TechniqueSpec]:
        # Two EMAs kept two averages and evaluated the last alone; two freezes would fight over the same weights.
        names = [technique.name for technique in techniques]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(
                f"{', '.join(twice)} listed more than once: list each technique once, with all its settings"
            )
        return techniques

    def has_technique(self, name: str) -> bool:
        return any(technique.name == name for technique in self.techniques)
