"""`model` (the registry entry that builds the network) and `init_from` (pretrained weights copied in
before training).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationInfo, model_validator

from mlrun.config.schema.base import ComponentSpec, Section


class ModelSpec(ComponentSpec):
    registry_kind = "models"


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
    shrink: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Shrink and perturb (Ash & Adams 2020): each loaded parameter becomes shrink x pretrained + perturb x
    its fresh initialisation; 1.0 and 0.0 copy it as is. Buffers (norm statistics) are copied as is."""
    perturb: Annotated[float, Field(ge=0.0)] = 0.0
    """With `shrink`: the share of the fresh initialisation added to each loaded parameter."""

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: Any) -> Any:
        return _weights_path(value)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        # The JSON Schema takes the bare path too (`init_from: runs/base`), as _bare_path does.
        section = handler.resolve_ref_schema(handler(core_schema))
        return {"anyOf": [{"type": "string", "description": "the path of a weights file or folder"}, section]}

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> InitFrom:
        if (self.run is None) == (self.path is None):
            raise ValueError("init_from needs exactly one of `run` (an mlrun run directory) or `path`")
        # A path names its file itself; a run recorded before this check keeps loading.
        if self.path is not None and self.checkpoint != "final" and not (info.context or {}).get("recorded"):
            raise ValueError(
                f"checkpoint '{self.checkpoint}' picks a file of init_from.run, and init_from.path names the file "
                "itself: use run: <run directory> with checkpoint, or point path at the file "
                "(e.g. runs/<name>/best.safetensors, runs/<name>/checkpoints/step-N)"
            )
        return self
