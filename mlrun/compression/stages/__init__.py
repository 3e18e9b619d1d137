"""Compression stages (registry `stages`): `factory(model, context, /, *, settings) -> Stage`.

Importing this package registers the built-in stages; `mlrun list stages` shows their settings.
"""

from mlrun.compression.stages import (  # noqa: F401
    cluster,
    distill,
    fold_batchnorm,
    low_rank,
    prune,
    prune_structured,
    qat,
)
