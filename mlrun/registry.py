"""Registries: a name -> factory map per kind of component, with signature-checked settings.

A component is one decorated function. Runtime inputs (the model's parameters, the dataset's
metadata) come positional-only before `/`; YAML settings come keyword-only after `*`:

    @optimizers.register("sgd")
    def sgd(params, /, *, lr: PositiveFloat = 0.1, momentum: float = 0.0): ...

The keyword-only parameters, with their type hints and defaults, become a pydantic model that
checks a config's settings at load time, before anything is built. A name of the form
"package.module:function" loads user code outside mlrun without registering it.

Try: `mlrun list optimizers`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from mlrun.errors import MlrunError, UsageError, did_you_mean


@dataclass(frozen=True)
class Setting:
    """One keyword argument of a component, as `mlrun list` shows it."""

    name: str
    annotation: str
    default: Any
    required: bool
    help: str


class Registry:
    """Named factories of one kind (models, optimizers, ...), populated by importing `package`."""

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.one = kind[:-2] if kind.endswith("sses") else kind[:-1]  # "loss" of "losses", "model" of "models"
        self.package = package
        self._entries: dict[str, Callable[..., Any]] = {}
        self._traits: dict[str, dict[str, Any]] = {}
        self._settings_models: dict[str, type[BaseModel]] = {}
        self._populated = False

    def register(self, name: str, **traits: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: `@models.register("mlp")`.

        `traits` are what only this component knows and others ask about (an optimizer's state
        bytes, whether a loss takes class probabilities): `@losses.register("mse", soft_labels=False)`.
        """

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = factory
            self._traits[name] = traits
            return factory

        return decorate

    def _populate(self) -> None:
        # Built-in components register themselves when their package is imported; doing it
        # lazily keeps torch out of `mlrun --help`.
        if not self._populated:
            self._populated = True
            importlib.import_module(self.package)

    def names(self) -> list[str]:
        self._populate()
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        """The factory for `name`, or for a "package.module:function" path."""
        self._populate()
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return _import_path(name, self.one)
        raise UsageError(
            f"unknown {self.one} '{name}'.{did_you_mean(name, self._entries)} "
            f"Known: {', '.join(self.names())} (or 'package.module:function' for your own code)."
        )

    def trait(self, name: str, key: str, default: Any = None) -> Any:
        """A trait declared with the entry; user code ("module:function") may set `mlrun_traits` on its factory."""
        self._populate()
        if name in self._traits:
            return self._traits[name].get(key, default)
        return getattr(self.get(name), "mlrun_traits", {}).get(key, default)

    def settings_model(self, name: str) -> type[BaseModel]:
        """A pydantic model of the factory's keyword-only settings (extra keys forbidden)."""
        if name not in self._settings_models:
            self._settings_models[name] = _settings_model(self.get(name), f"{self.kind}.{name}")
        return self._settings_models[name]

    def settings(self, name: str) -> list[Setting]:
        factory = self.get(name)
        helps = _arg_help(factory.__doc__ or "")
        model = self.settings_model(name)
        out = []
        for key, field in model.model_fields.items():
            annotation = _type_name(field.annotation)
            required = field.is_required()
            out.append(Setting(key, annotation, None if required else field.default, required, helps.get(key, "")))
        return out

    def summary(self, name: str) -> str:
        """First line of the factory's docstring."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""

    def validate(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Settings checked and coerced by the factory's signature; raises pydantic's ValidationError."""
        model = self.settings_model(name)
        return dict(model.model_validate(settings))

    def build(self, name: str, *runtime: Any, **settings: Any) -> Any:
        """Call the factory with runtime inputs and validated settings. The user's own factory
        ("module:function") failing is named as theirs (exit 2) wherever it is built; a built-in entry's
        ValueError is left to the caller, which names the component, and any other failure of it is
        mlrun's bug (exit 1, traceback on --debug)."""
        factory, settings = self.get(name), self.validate(name, settings)
        if ":" not in name:
            return factory(*runtime, **settings)
        try:
            return factory(*runtime, **settings)
        except MlrunError:
            raise
        except Exception as exc:
            raise UsageError(
                f"{self.one} '{name}' (your factory) raised {type(exc).__name__}: {exc}; "
                "fix it there (--debug shows its traceback)"
            ) from exc


def _import_path(path: str, one: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module_name):  # ./mods, mods.py, a/b
        dotted = re.sub(r"\.py$", "", module_name).strip("./").replace("/", ".")
        raise UsageError(
            f"{one} '{path}': '{module_name}' is not a module name; write '{dotted}:{attr}' (a module importable "
            "from the working directory or PYTHONPATH, dotted, without ./ or .py)"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # user modules next to the config, without PYTHONPATH=.
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import '{module_name}' for {one} '{path}': {exc}. Is it on PYTHONPATH?") from exc
    except SyntaxError as exc:
        raise UsageError(
            f"{one} '{path}': {exc.filename}:{exc.lineno}: syntax error ({exc.msg}); fix the module"
        ) from None
    except Exception as exc:  # the module's own code failed as it was imported
        raise UsageError(
            f"{one} '{path}': importing '{module_name}' raised {type(exc).__name__}: {exc}; fix the module"
        ) from exc
    try:
        factory = getattr(module, attr)
    except AttributeError:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise UsageError(f"module '{module_name}' has no '{attr}'.{did_you_mean(attr, public)}") from None
    if not callable(factory):
        raise UsageError(
            f"{one} '{path}' is {type(factory).__name__} {factory!r:.40}, not a function or class; "
            f"name the factory that builds the {one}"
        )
    return factory


def _settings_model(factory: Callable[..., Any], title: str) -> type[BaseModel]:
    hints = typing.get_type_hints(factory, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(factory).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, Field(default))
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)
    return create_model(title.replace(".", "_"), __config__=config, **fields)


_ARG_LINE = re.compile(r"^\s{2,}(\w+):\s*(.+)$")


def _arg_help(doc: str) -> dict[str, str]:
    """`name: text` entries of a Google-style "Args:" block, each with its deeper-indented continuation
    lines (which may themselves read `word: ...`)."""
    helps: dict[str, str] = {}
    indent, name = None, None  # the entries' indent once seen; the entry being read
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Settings:"):
            indent, name = -1, None
            continue
        if indent is None or not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(line)
        if match and indent in (-1, depth):
            indent, name = depth, match.group(1)
            helps[name] = match.group(2).strip()
        elif name is not None and depth > indent:
            helps[name] += " " + line.strip()
        else:
            indent, name = None, None
    return helps


def _type_name(annotation: Any) -> str:
    """A readable type: `tuple[float, float]`, `'relu' | 'gelu'`, `int | None` (constraints dropped)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


# The kinds of component. Each package imports its modules so their decorators run.
models = Registry("models", "mlrun.models")
datasets = Registry("datasets", "mlrun.data")
losses = Registry("losses", "mlrun.losses")
metrics = Registry("metrics", "mlrun.metrics")
optimizers = Registry("optimizers", "mlrun.optim")
schedulers = Registry("schedulers", "mlrun.optim")
techniques = Registry("techniques", "mlrun.techniques")
trackers = Registry("trackers", "mlrun.tracking")
augmentations = Registry("augmentations", "mlrun.data.augment")
objectives = Registry("objectives", "mlrun.objectives")
stages = Registry("stages", "mlrun.compression.stages")

REGISTRIES: dict[str, Registry] = {
    r.kind: r
    for r in (
        models,
        datasets,
        losses,
        metrics,
        optimizers,
        schedulers,
        techniques,
        trackers,
        augmentations,
        objectives,
        stages,
    )
}
