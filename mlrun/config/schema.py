"""The experiment config: frozen pydantic models, one per section, a docstring on every field.

The docstrings are the user's reference: `mlrun schema` turns them into JSON Schema descriptions
and README's config reference lists them. Components (model, data, loss, metrics, optimizer,
scheduler, techniques, tracking) are `name` plus keyword settings; those settings are checked
against the registered function's signature in `mlrun.config.components`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PlainSerializer,
    PositiveFloat,
    PositiveInt,
    WithJsonSchema,
    model_validator,
)


class Duration(NamedTuple):
    """A span of training: `count` epochs ("3ep") or optimizer steps ("200st" or a bare 200)."""

    count: int
    unit: Literal["ep", "st"]

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


_DURATION = re.compile(r"^\s*(\d+)\s*(ep|st)?\s*$")


def parse_duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration like '1ep' or '200st'")
    if isinstance(value, int):
        count, unit = value, "st"
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"'{value}' is not a duration: write '<N>ep' (epochs) or '<N>st' (optimizer steps)")
        count, unit = int(match.group(1)), match.group(2) or "st"
    if count <= 0:
        raise ValueError("a duration must be at least 1")
    return Duration(count, unit)


DurationField = Annotated[
    Duration,
    BeforeValidator(parse_duration),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^\d+(ep|st)?$"}]}),
]


def _batch_size(value: Any) -> Any:
    """A positive integer or 'auto', with one message for anything else."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError("Input should be greater than 0 (or 'auto' for the largest batch that fits)")
    raise ValueError("expected a positive integer or 'auto'")


class Section(BaseModel):
    """A fixed section: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ComponentSpec(BaseModel):
    """`name` plus the factory's keyword settings; a bare string is just the name."""

    model_config = ConfigDict(extra="allow", frozen=True, use_attribute_docstrings=True)
    registry_kind: ClassVar[str]

    name: str
    """Registry name (`mlrun list`), or 'package.module:function' for your own code."""

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def settings(self) -> dict[str, Any]:
        """The keyword settings passed to the factory (every key except the declared fields)."""
        return dict(self.model_extra or {})


class ModelSpec(ComponentSpec):
    registry_kind = "models"


class LossSpec(ComponentSpec):
    registry_kind = "losses"


class MetricSpec(ComponentSpec):
    registry_kind = "metrics"


class ParamGroupRule(Section):
    """Parameters matched by name get their own learning-rate scale and weight decay."""

    match: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]
    """Glob pattern(s) of parameter names, e.g. 'backbone.*' or ['blocks.0.*', 'embed.*']; the first rule that
    matches a parameter wins."""
    lr_scale: Annotated[float, Field(ge=0.0)] = 1.0
    """Multiplies optimizer.lr for these parameters (the schedule scales every group alike)."""
    weight_decay: Annotated[float, Field(ge=0.0)] | None = None
    """Weight decay of the matched weight matrices (biases and norm weights stay undecayed); default optimizer's."""


class OptimizerSpec(ComponentSpec):
    """The optimizer (`name` + its settings) and how its parameters are grouped."""

    registry_kind = "optimizers"

    param_groups: list[ParamGroupRule] = []
    """Per-pattern learning-rate scale and weight decay, e.g. [{match: 'blocks.*', lr_scale: 0.1}]."""
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Layer-wise lr decay for models with `blocks`: the head keeps lr, block i gets lr * layer_decay^(n - i),
    embeddings lr * layer_decay^(n + 1); multiplies with param_groups' lr_scale."""


class TechniqueSpec(ComponentSpec):
    registry_kind = "techniques"


class TrackerSpec(ComponentSpec):
    registry_kind = "trackers"


class ObjectiveSpec(ComponentSpec):
    registry_kind = "objectives"


class StageSpec(ComponentSpec):
    """One compression stage of `mlrun compress` (`mlrun list stages`) and how its result is fine-tuned."""

    registry_kind = "stages"

    finetune: dict[str, Any] | Literal[False] = {}
    """Fine-tuning after the stage, through the training loop, as overrides of the run's config
    (`{train.epochs: 2, optimizer.lr: 1.0e-4}`; {} trains with the run's own settings); false: none."""
    rounds: PositiveInt = 1
    """Apply the stage and fine-tune this many times, each round taking a share of the stage's target
    (iterative pruning)."""


class AugmentSpec(ComponentSpec):
    registry_kind = "augmentations"


class DataSpec(ComponentSpec):
    """The dataset (`name` + its settings, e.g. `val_fraction`) and how it is batched."""

    registry_kind = "datasets"

    batch_size: Annotated[int | Literal["auto"], BeforeValidator(_batch_size)] = 64
    """Samples per training micro-batch, per process; auto: the largest that fits (train.memory_budget_gb)."""
    eval_batch_size: PositiveInt | None = None
    """Samples per evaluation batch; default: 4x batch_size."""
    num_workers: NonNegativeInt | Literal["auto"] = 0
    """Loader worker processes; 0 loads in the training process; auto: 0 for in-memory data, else spare cores."""
    persistent_workers: bool = True
    """Keep worker processes alive between epochs (with num_workers > 0)."""
    prefetch_factor: PositiveInt | None = None
    """Batches each worker loads ahead (with num_workers > 0); default 2."""
    shuffle: bool = True
    """Shuffle the training split every epoch (seeded by `seed` and the epoch)."""
    drop_last: bool = False
    """Drop the last incomplete training batch of each epoch."""
    pin_memory: bool | None = None
    """Page-locked host memory for faster copies to a GPU; default: on when training on CUDA."""
    augment: list[AugmentSpec] = []
    """Augmentation steps applied in order to training batches only, e.g. [hflip, {name: random_crop, padding: 4}]."""
    augment_field: str | None = None
    """For batches of named tensors: the image field augmentation applies to (targets: `labels`)."""
    dedup: bool = False
    """Drop exact duplicate samples within each split and report samples shared by train and validation (leakage)."""


class SchedulerSpec(ComponentSpec):
    """The learning-rate schedule, with linear warm-up shared by every schedule."""

    registry_kind = "schedulers"

    name: str = "constant"
    """Schedule: constant | linear | cosine | cosine_restarts | step | exponential | polynomial | onecycle | plateau
    | wsd (warm-up, stable, decay: extendable on resume)
    | lr_range (the exponential ramp of `mlrun lr-find`)."""
    warmup_steps: NonNegativeInt = 0
    """Optimizer steps of linear warm-up from warmup_start_factor * lr to lr."""
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Warm-up as a fraction of all optimizer steps (used when warmup_steps is 0)."""
    warmup_start_factor: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Learning-rate multiplier at the first warm-up step."""


class Monitor(Section):
    """A logged figure to watch, e.g. `val/accuracy`."""

    monitor: str = "val/loss"
    """Name of a logged figure: val/loss, val/<metric>, train/loss."""
    mode: Literal["min", "max"] = "min"
    """Whether smaller (min) or larger (max) is better."""


class EarlyStopping(Monitor):
    patience: PositiveInt = 5
    """Evaluations without improvement before training stops."""
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    """Smallest change that counts as an improvement."""


class TrainConfig(Section):
    """How long and how to train."""

    epochs: PositiveInt | None = None
    """Passes over the training split; with max_steps, whichever ends first."""
    max_steps: PositiveInt | None = None
    """Optimizer steps to train for; with epochs, whichever ends first."""
    grad_accum_steps: PositiveInt = 1
    """Micro-batches whose gradients are summed into one optimizer step."""
    max_grad_norm: PositiveFloat | None = None
    """Clip the global gradient norm to this value; null disables clipping."""
    precision: Literal["fp32", "bf16", "fp16", "fp8"] = "fp32"
    """Numeric precision: fp32, or bf16/fp16 mixed precision through Accelerate (fp16 needs a GPU), or fp8: torchao's
    float8 Linear layers under bf16 autocast (GPUs of compute capability >= 8.9: L4, L40, H100, H200, B200)."""
    eval_every: DurationField = Duration(1, "ep")
    """How often to evaluate: '1ep' every epoch, '200st' every 200 optimizer steps."""
    log_every: DurationField = Duration(20, "st")
    """How often to log training figures (each log costs one device sync)."""
    checkpoint_every: DurationField | None = Duration(1, "ep")
    """How often to write a resumable checkpoint; null only at the end."""
    keep_checkpoints: PositiveInt = 2
    """Newest checkpoints to keep on disk (best.safetensors, when kept, is a separate file)."""
    checkpoint_async: bool = False
    """Write model and optimizer state in a background thread (torch.distributed.checkpoint.async_save):
    training goes on after a copy in memory; the next checkpoint waits for the previous one. One process,
    ddp or fsdp (pipeline and deepspeed: refused)."""
    best: Monitor | None = None
    """Keep best.safetensors for the best value of this figure, e.g. {monitor: val/accuracy, mode: max}."""
    early_stopping: EarlyStopping | None = None
    """Stop when a figure stops improving, e.g. {monitor: val/accuracy, mode: max, patience: 5}."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss: stop (status failed, exit 1; checked at each log) or skip the step (one sync a step)."""
    compile: bool | Literal["regional"] = False
    """torch.compile the model in place (weight and checkpoint names stay those of eager): true compiles the whole
    model, regional each of its blocks (model.blocks; faster start-up)."""
    memory_budget_gb: PositiveFloat | None = None
    """Memory data.batch_size: auto may fill with live tensors; default 90% of the GPU, or half the available RAM
    on CPU (a CPU process's resident memory runs higher than its live tensors: glibc keeps freed memory)."""
    deterministic: bool = False
    """Use only deterministic kernels (torch.use_deterministic_algorithms); slower on GPU."""
    requeue_on_signal: bool = False
    """Under SLURM, after the checkpoint a stop signal (SIGUSR1/SIGTERM) triggers, requeue the job
    (scontrol requeue); the requeued job resumes the same run directory."""

    @model_validator(mode="after")
    def _has_a_length(self) -> TrainConfig:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set train.epochs or train.max_steps (or both)")
        return self


def _weights_path(value: Any) -> Any:
    """A bare string is the path of a weights file or folder."""
    return {"path": value} if isinstance(value, str) else value


class InitFrom(Section):
    """Pretrained weights copied into the model before training (not on resume: a resume continues the run)."""

    run: str | None = None
    """An mlrun run directory to take weights from (with `checkpoint`)."""
    checkpoint: str = "final"
    """With `run`: final (model.safetensors) | best (best.safetensors) | latest | step-N (checkpoints/step-N)."""
    path: str | None = None
    """Instead of `run`: a .safetensors file, a .pt/.pth/.bin file (loaded with weights_only) or a folder
    written by save_pretrained (model.safetensors, pytorch_model.bin or their shards)."""
    exclude: list[str] = []
    """Glob patterns of the model's keys left as freshly initialised, e.g. ['head.*'] for a new head."""
    prefix: dict[str, str] = {}
    """Renaming of source keys before matching: {source prefix: model prefix}, e.g. {'bert.': 'encoder.'}."""
    warn_below: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Warn when less than this share of the model's parameter elements was loaded."""

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: Any) -> Any:
        return _weights_path(value)

    @model_validator(mode="after")
    def _one_source(self) -> InitFrom:
        if (self.run is None) == (self.path is None):
            raise ValueError("init_from needs exactly one of `run` (an mlrun run directory) or `path`")
        return self


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
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} key needs low <= high")
        elif self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        elif self.log and self.step:
            raise ValueError(
                "`step` and `log: true` cannot be combined (a range is sampled either on a log scale or on "
                "an even grid); for log-spaced grid values use type: categorical with choices: [...]"
            )
        return self


class SamplerConfig(Section):
    name: Literal["tpe", "random", "grid", "cmaes", "gp", "nsga2"] = "tpe"
    """Optuna sampler: tpe | random | grid | cmaes | gp | nsga2."""
    seed: int | None = None
    """Seed of the sampler, for repeatable searches."""
    startup_trials: NonNegativeInt | None = None
    """tpe / gp / cmaes: trials sampled at random before the model-based search starts (null:
    Optuna's default, 10 for tpe and gp). Small studies gain from fewer."""
    population_size: Annotated[int, Field(ge=2)] | None = None
    """nsga2: individuals per generation (null: Optuna's 50). The first generation is sampled at
    random, so a study needs several times this many trials to search; e.g. 10 for a 50-trial study."""
    multivariate: bool = False
    """tpe: model the parameters jointly (Optuna's multivariate TPE, with grouping of conditional
    parameters) instead of one at a time; usually better when parameters interact, such as lr and batch."""


class PrunerConfig(Section):
    name: Literal["none", "median", "successive_halving", "hyperband", "wilcoxon"] = "median"
    """Stops hopeless trials at their evaluations: none | median | successive_halving | hyperband | wilcoxon.
    Budgets count evaluations (`train.eval_every`); keep eval_every in epochs when batch size is searched."""
    warmup_evaluations: NonNegativeInt = 0
    """median: evaluations a trial completes before it may be pruned."""
    startup_trials: NonNegativeInt = 2
    """median: trials that finish before pruning starts."""
    min_resource: PositiveInt | Literal["auto"] = "auto"
    """hyperband / successive_halving: the evaluations every trial gets before it can be pruned (auto: 1)."""
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    """hyperband / successive_halving: 1 / reduction_factor of trials go on to the next rung."""


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
    enqueue_config: bool = True
    """strategy optuna: run the config's own values of the space's keys as the first trial of a new study,
    when all lie inside the space (a good config then guides the sampler from the start); false: all sampled."""
    near_best: PositiveFloat = 0.005
    """strategy optuna: the end report counts the completed trials within this distance of the best value,
    in the metric's own units (0.005: half a point of a 0-1 figure such as accuracy)."""
    strategy: Literal["optuna", "pbt"] = "optuna"
    """optuna: independent trials; pbt: population-based training on mlrun checkpoints."""
    pbt: PBTConfig = PBTConfig()
    """Settings of strategy: pbt."""


class DistributedConfig(Section):
    """How several processes share the work (under torchrun or accelerate launch; one process ignores it)."""

    strategy: Literal["auto", "ddp", "fsdp", "deepspeed", "pipeline"] = "auto"
    """auto (DDP for several processes) | ddp | fsdp (FSDP2: each of model.blocks, then the root, sharded
    over the processes; GPUs and CPU processes alike) | deepspeed (when installed) | pipeline (one stage of
    model.blocks per process, torch.distributed.pipelining)."""
    find_unused_parameters: bool = False
    """ddp: let some parameters receive no gradient in a step (slower)."""
    fsdp_sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"] = "full_shard"
    """fsdp: full_shard (parameters, gradients, optimizer state; reshard_after_forward: true) | shard_grad_op
    (parameters stay gathered from forward to backward; reshard_after_forward: false) | hybrid_shard (shard
    within a node, replicate across nodes) | no_shard (refused: that is ddp)."""
    fsdp_param_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """fsdp: dtype parameters are gathered and computed in (the mixed precision policy); auto: train.precision."""
    fsdp_reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    """fsdp: dtype gradients are reduce-scattered in (fp32 keeps the sum over processes exact to fp32)."""
    fsdp_cpu_offload: bool = False
    """fsdp: keep sharded parameters, gradients and optimizer state in CPU memory; the optimizer steps on the CPU."""
    fsdp_activation_checkpointing: bool = False
    """fsdp: refused (FSDP2 has none of its own); use techniques: [activation_checkpointing]."""
    deepspeed_zero_stage: Annotated[int, Field(ge=0, le=3)] = 2
    """deepspeed: ZeRO stage (1 optimizer state, 2 + gradients, 3 + parameters)."""
    pipeline_schedule: Literal["gpipe", "1f1b"] = "gpipe"
    """pipeline: gpipe (all forwards, then all backwards) or 1f1b (interleaved: fewer activations alive)."""
    pipeline_microbatches: PositiveInt = 4
    """pipeline: micro-batches each global batch is cut into; more keeps more stages busy at once."""
    pipeline_split: list[PositiveInt] | None = None
    """pipeline: indices of the blocks that start stages 2, 3, ... (one fewer than processes); default even."""


class EnergyConfig(Section):
    """Energy and carbon of a run: GPU energy from NVML, CPU energy from RAPL, else an estimate."""

    enabled: bool = True
    """Measure energy during training and profiling; written to summary.json and profile.json."""
    grid_g_per_kwh: Annotated[float, Field(ge=0.0)] = 475.0
    """Carbon intensity of the electricity in grams of CO2 per kWh (default: the world average, IEA 2019);
    look up your grid's figure (e.g. electricitymaps.com): ~30 in France, ~370 in the US, ~550 in India."""
    cpu_watts: PositiveFloat | None = None
    """Rated power of the CPU(s) in watts, for the estimate used when RAPL counters are unreadable;
    default 10 W per logical core. The estimate is rated power x the run's measured CPU utilisation."""
    rapl_root: str = "/sys/class/powercap"
    """Folder of the Linux powercap RAPL counters (intel-rapl:N/energy_uj)."""
    poll_s: PositiveFloat = 10.0
    """Seconds between counter reads, so a RAPL counter that wraps around is never missed."""


class ExperimentConfig(Section):
    """One experiment: everything `mlrun train` needs."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    """Run name; the run directory is <output_dir>/<name>."""
    seed: int = 0
    """Seed for every random number generator (python, numpy, torch, data order)."""
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
    qat, low_rank, cluster (`mlrun list stages`)."""
    model_edits: list[dict[str, Any]] = []
    """Structural edits of the built model (pruned shapes, factorized layers), recorded by `mlrun compress`
    in a stage's config.yaml and replayed when the model is built; not written by hand."""

    def has_technique(self, name: str) -> bool:
        return any(technique.name == name for technique in self.techniques)


def component_fields(config: BaseModel) -> list[tuple[tuple[str | int, ...], ComponentSpec]]:
    """Every component spec in a validated config with its key path, e.g. (('metrics', 0), spec)."""
    found: list[tuple[tuple[str | int, ...], ComponentSpec]] = []
    for key in type(config).model_fields:
        value = getattr(config, key)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, ComponentSpec):
                path = (key,) if index is None else (key, index)
                found.append((path, item))
                # Components inside a component's declared fields (data.augment's steps).
                found.extend(((*path, *inner), spec) for inner, spec in component_fields(item))
    return found
