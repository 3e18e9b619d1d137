"""`transformers`: Hugging Face models from a local folder or an inline config, never downloaded.

    model: {name: transformers, path: models/tiny-bert, task: sequence_classification}
    model: {name: transformers, config: {model_type: gpt2, n_layer: 2, n_embd: 64, n_head: 2}, task: causal_lm}

`path` is a folder written by `save_pretrained` (config.json + safetensors); its weights are loaded
and a classification head whose size differs from the data's classes is initialised anew. `config`
builds a fresh model of that architecture. The data's metadata fills what the config leaves out
(number of labels, vocabulary). The model takes the batch's named tensors and returns a ModelOutput,
which the objectives read without a wrapper (`supervised` or `model_loss`; `causal_lm` for LMs).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from torch import nn

from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.registry import models

AUTO_CLASSES = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
    "token_classification": "AutoModelForTokenClassification",
}
Task = Literal["auto", "sequence_classification", "causal_lm", "masked_lm", "token_classification"]


def import_transformers():
    from mlrun.notices import import_quietly

    try:
        transformers = import_quietly("transformers")
        # Its model classes import torchao (through the quantizers) when it is installed: torchao's notices
        # (CUDA kernels that do not load on CPU, torch.compile deprecations) come from this import.
        import_quietly("transformers.modeling_utils")
    except ImportError:
        raise UsageError(
            "model 'transformers' needs the transformers package: pip install 'mlrun[transformers]'"
        ) from None
    transformers.logging.set_verbosity_error()  # load reports and hub notices a user cannot act on
    transformers.logging.disable_progress_bar()  # "Loading weights" bars of a few milliseconds
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers


def _task(task: str, meta: DataMeta) -> str:
    if task != "auto":
        return task
    return "causal_lm" if meta.task == "lm" else "sequence_classification"


def _head_settings(task: str, meta: DataMeta) -> dict[str, Any]:
    """What the data decides about the model: labels for classification, the regression width."""
    if task not in ("sequence_classification", "token_classification"):
        return {}
    if meta.task == "regression":
        return {"num_labels": meta.output_dim or 1, "problem_type": "regression"}
    if meta.num_classes:
        return {"num_labels": meta.num_classes}
    return {}


def _check_vocabulary(model: nn.Module, meta: DataMeta, where: str) -> None:
    vocab = getattr(model.config, "vocab_size", None)
    if meta.vocab_size and vocab and meta.vocab_size > vocab:
        raise UsageError(
            f"model ({where}): the data's tokenizer has {meta.vocab_size} ids but the model's vocabulary is {vocab}; "
            "use the model's own tokenizer folder as data.tokenizer, or set config.vocab_size"
        )


@models.register("transformers")
def transformers_model(
    meta: DataMeta, /, *, path: str | None = None, config: dict[str, Any] | None = None, task: Task = "auto"
) -> nn.Module:
    """A Hugging Face transformers model from a local save_pretrained folder or an inline config.

    Args:
        path: a local folder written by save_pretrained (config.json and weights); weights are loaded.
        config: an inline architecture, e.g. {model_type: bert, hidden_size: 64, num_hidden_layers: 2}; fresh weights.
        task: sequence_classification | causal_lm | masked_lm | token_classification; auto: from the data.
    """
    if (path is None) == (config is None):
        raise UsageError("model 'transformers': set exactly one of model.path (a local folder) or model.config")
    transformers = import_transformers()
    task = _task(task, meta)
    auto_class = getattr(transformers, AUTO_CLASSES[task])
    head = _head_settings(task, meta)
    if path is not None:
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise UsageError(
                f"model.path: '{path}' is not a save_pretrained folder (no config.json; relative to {Path.cwd()}). "
                "Nothing is downloaded: write the model with save_pretrained first."
            )
        model = auto_class.from_pretrained(str(folder), local_files_only=True, ignore_mismatched_sizes=True, **head)
        where = f"path '{path}'"
    else:
        settings = dict(config)
        model_type = settings.pop("model_type", None)
        if model_type is None:
            raise UsageError("model.config: name the architecture with model_type (bert, gpt2, llama, ...)")
        if meta.vocab_size and "vocab_size" not in settings:
            settings["vocab_size"] = meta.vocab_size
        try:
            architecture = transformers.AutoConfig.for_model(model_type, **settings, **head)
        except ValueError as exc:
            raise UsageError(f"model.config: {exc}") from None
        model = auto_class.from_config(architecture)
        where = f"model_type '{model_type}'"
    _check_vocabulary(model, meta, where)
    declare_blocks(model)
    return model


def declare_blocks(model: nn.Module) -> None:
    """`model.blocks`: the model's repeated layers, found through its own structure (BERT's encoder.layer,
    GPT-2's h, Llama's layers, T5's encoder then decoder blocks), so layer_decay, gradual unfreezing,
    FSDP block wrapping and activation checkpointing reach them as they reach mlrun's own models.

    A plain attribute, not a registered submodule: parameter and state-dict names stay the model's own
    (checkpoints, save_pretrained folders, init_from and export are unchanged).
    """
    if isinstance(getattr(model, "blocks", None), (nn.ModuleList, nn.Sequential)):
        return
    lists = repeated_layer_lists(getattr(model, "base_model", model))
    if not lists:
        return
    blocks = lists[0] if len(lists) == 1 else nn.ModuleList([layer for found in lists for layer in found])
    object.__setattr__(model, "blocks", blocks)


def repeated_layer_lists(module: nn.Module) -> list[nn.ModuleList]:
    """The outermost ModuleLists of one layer class holding parameters, in registration order (input side first)."""
    found: list[nn.ModuleList] = []
    inside: set[int] = set()
    for _, child in module.named_modules():
        if id(child) in inside:
            continue
        if isinstance(child, nn.ModuleList) and len(child) and len({type(layer) for layer in child}) == 1:
            if any(True for _ in child.parameters()):
                found.append(child)
                inside.update(id(m) for m in child.modules())
    return found
