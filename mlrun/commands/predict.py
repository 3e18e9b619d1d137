"""`mlrun predict RUN_DIR|EXPORT_DIR INPUT [--out FILE] [--checkpoint C] [--json]`.

Prepares INPUT (a table, an image folder or a JSON Lines file) with the run's own preprocessing,
and writes one prediction per sample: the class and each class's probability, or the regression
value(s), as CSV or JSON Lines (by --out's suffix; without --out, CSV on stdout). When INPUT
carries labels, the whole file is also scored with the run's loss and metrics: the same figures
`mlrun eval` gives on the same rows. Bad input stops with exit code 2 naming the row or file.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from mlrun.jsonout import print_json


def run_predict(model_path: Path, input_path: Path, out: Path | None, checkpoint: str, json_output: bool) -> None:
    from mlrun.commands.usage import check_not_overwriting
    from mlrun.prediction.inputs import read_inputs
    from mlrun.prediction.model import load_predictor, predict_rows
    from mlrun.prediction.outputs import output_kind, render

    kind = output_kind(out)  # a bad suffix is reported before the model loads
    if out is not None:
        check_not_overwriting(out, "--out", inputs=(input_path,))
    # Notes printed while the run's data is rebuilt (dedup counts, ...) go to stderr: stdout holds
    # only the predictions or the --json document.
    with contextlib.redirect_stdout(sys.stderr):
        predictor = load_predictor(model_path, checkpoint)
        inputs = read_inputs(input_path, predictor)
        rows = predict_rows(predictor, inputs)
        scores = predictor.score(inputs.dataset) if inputs.labelled else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(rows, kind))
    report: dict[str, Any] = {
        "model": str(model_path),
        "weights": str(predictor.weights),
        "quantize": predictor.quantize,
        "input": str(input_path),
        "samples": len(rows),
        "task": predictor.meta.task,
        "scores": scores,
        "out": str(out) if out else None,
    }
    if json_output:
        print_json(report if out else {**report, "predictions": rows})
        return
    if out is None:
        sys.stdout.write(render(rows, kind))
    where = sys.stdout if out else sys.stderr  # stdout holds the predictions when there is no --out
    deployed = f" as deployed ({predictor.quantize})" if predictor.quantize != "none" else ""
    print(
        f"mlrun: {len(rows)} predictions from {predictor.weights}{deployed}" + (f" -> {out}" if out else ""), file=where
    )
    from mlrun.tracking.figures import format_figure

    for key, value in (scores or {}).items():
        print(f"  {key:<24} {format_figure(value)}", file=where)
