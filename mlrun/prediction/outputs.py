"""Model outputs -> prediction records -> a CSV or JSON Lines file.

`prediction_tensor` is the one place here that looks at what a model returned; everything after it
sees a (N, outputs) tensor.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch


def prediction_tensor(outputs: Any) -> torch.Tensor:
    """The predictions in whatever a model returned: a tensor, a tuple (logits first), a mapping or a
    transformers ModelOutput; the model contract's own reading (models/outputs.py)."""
    from mlrun.models.outputs import logits_of

    return logits_of(outputs)


def records(outputs: torch.Tensor, task: str, classes: list | None) -> list[dict[str, Any]]:
    """Classification: the class and every class's probability; regression: the value(s)."""
    outputs = outputs.float().reshape(len(outputs), -1)
    if task == "classification":
        if outputs.shape[1] == 1:  # one logit: the probability of the second class
            positive = torch.sigmoid(outputs[:, 0])
            probabilities = torch.stack([1 - positive, positive], dim=1)
        else:
            probabilities = torch.softmax(outputs, dim=1)
        names = classes if classes and len(classes) == probabilities.shape[1] else list(range(probabilities.shape[1]))
        chosen = probabilities.argmax(dim=1).tolist()
        return [
            {
                "prediction": names[index],
                "probability": round(float(row[index]), 6),
                **{f"p_{name}": round(float(p), 6) for name, p in zip(names, row)},
            }
            for index, row in zip(chosen, probabilities)
        ]
    # float32 printed as float64 shows noise digits (12.15999984741211 for 12.16): 7 significant digits
    # are what float32 holds.
    if outputs.shape[1] == 1:
        return [{"prediction": _float32(value)} for value in outputs[:, 0]]
    return [{f"prediction_{i}": _float32(v) for i, v in enumerate(row)} for row in outputs]


def _float32(value: torch.Tensor) -> float:
    return float(f"{float(value):.7g}")


def render(rows: list[dict[str, Any]], kind: str) -> str:
    """`csv` (a header, one line a row) or `jsonl` (one JSON object a line)."""
    if kind == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def output_kind(path: Path | None) -> str:
    from mlrun.errors import UsageError

    if path is None or path.suffix.lower() == ".csv":
        return "csv"
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise UsageError(f"--out: '{path}' should end in .csv or .jsonl (the format is chosen by the suffix)")
