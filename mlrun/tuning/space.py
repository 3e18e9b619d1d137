"""The search space: dotted config keys sampled by Optuna and applied as `key=value` overrides.

Every candidate value of every key is applied to the config and validated before the first trial,
so a misspelt key or an impossible choice fails at once with the override's own message.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from mlrun.config.load import as_override, load_config
from mlrun.config.schema import ParamSpec, TuneConfig
from mlrun.errors import UsageError

# Keys a trial cannot change: they name the run or fix state shared by every trial in the process.
FIXED_KEYS = ("name", "output_dir", "tune", "train.precision", "base")


def encode(value: Any) -> Any:
    """Optuna's categorical choices must be scalars: lists and mappings travel as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def decode(value: Any, spec: ParamSpec) -> Any:
    encoded = {encode(choice): choice for choice in spec.choices or []}
    return encoded.get(value, value)


def suggest(trial, key: str, spec: ParamSpec) -> Any:
    """A value for `key` from an Optuna trial."""
    if spec.type == "categorical":
        return decode(trial.suggest_categorical(key, [encode(c) for c in spec.choices]), spec)
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def sample(rng: random.Random, spec: ParamSpec) -> Any:
    """A value drawn without Optuna (population-based training)."""
    if spec.type == "categorical":
        return rng.choice(spec.choices)
    if spec.log:
        value = math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))
    else:
        value = rng.uniform(spec.low, spec.high)
    return int(round(value)) if spec.type == "int" else value


def perturb(rng: random.Random, value: Any, spec: ParamSpec, factors: tuple[float, float], resample: float) -> Any:
    """PBT's explore step: resample, or multiply by one of `factors` within the range."""
    if spec.type == "categorical" or rng.random() < resample:
        return sample(rng, spec)
    moved = min(spec.high, max(spec.low, value * rng.choice(factors)))
    return int(round(moved)) if spec.type == "int" else moved


def grid(space: dict[str, ParamSpec]) -> dict[str, list[Any]]:
    """The grid sampler's values: categorical choices, or int/float ranges with a step."""
    values = {}
    for key, spec in space.items():
        if spec.type == "categorical":
            values[key] = [encode(c) for c in spec.choices]
        elif spec.step:
            count = math.floor((spec.high - spec.low) / spec.step + 1e-9) + 1  # points within the range, as Optuna
            values[key] = [spec.low + i * spec.step for i in range(count)]
            if spec.type == "int":
                values[key] = [int(v) for v in values[key]]
        else:
            raise UsageError(f"tune.space.{key}: the grid sampler needs `step` on a {spec.type} range, or choices")
    return values


def check_space(path: Path, overrides: list[str], tune: TuneConfig) -> None:
    """Every key at its extremes (every choice) must give a valid config; fails before any trial."""
    for key, spec in tune.space.items():
        if key.split(".")[0] in FIXED_KEYS or key in FIXED_KEYS:
            raise UsageError(f"tune.space.{key}: this key cannot vary between trials (fixed: {', '.join(FIXED_KEYS)})")
        candidates = spec.choices if spec.type == "categorical" else [spec.low, spec.high]
        for value in candidates:
            value = int(value) if spec.type == "int" else value
            try:
                load_config(path, [*overrides, as_override(key, value)])
            except UsageError as exc:
                raise UsageError(f"tune.space.{key} = {value!r} gives an invalid config: {exc}") from None


def config_point(config, space: dict[str, ParamSpec]) -> tuple[dict[str, Any] | None, str]:
    """The config's own values of the space's keys, as Optuna stores them, to enqueue as a first trial.

    None, with the reason, when a key's value lies outside its range or choices, or the config does
    not set it (a factory default is not in the config): a trial outside the space would be one the
    sampler cannot model.
    """
    dump = config.model_dump(mode="json")
    point = {}
    for key, spec in space.items():
        value = dump
        for part in key.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return None, f"the config does not set {key}"
        inside = _inside(value, spec)
        if inside is _OUTSIDE:
            return None, f"{key} = {value!r} lies outside tune.space.{key}"
        point[key] = inside
    return point, ""


_OUTSIDE = object()  # not None: null can be a categorical choice


def _inside(value: Any, spec: ParamSpec) -> Any:
    """`value` as Optuna's distribution holds it when the spec contains it, else _OUTSIDE."""
    if spec.type == "categorical":
        return next((encode(choice) for choice in spec.choices if choice == value), _OUTSIDE)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not spec.low <= value <= spec.high:
        return _OUTSIDE
    if spec.type == "int":
        if value != int(value) or (spec.step and (int(value) - int(spec.low)) % int(spec.step)):
            return _OUTSIDE
        return int(value)
    if spec.step and not math.isclose((value - spec.low) / spec.step, round((value - spec.low) / spec.step)):
        return _OUTSIDE
    return float(value)
