"""int8 export of a Linear-heavy model: file size, CPU latency and accuracy against fp32 eager PyTorch.

    python scripts/bench/export.py

Trains configs/digits_wide_mlp.yaml (1.6M parameters) once, exports it in every format with int8
(dynamic) and int8-static, and verifies each file with its own runtime. Targets for int8: file
<= 0.3x the fp32 weights, batch-64 latency >= 1.5x faster than fp32 eager, metric drop <= 0.5
points. Prints a table, then one JSON line; exits 1 when an int8 row misses a target.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mlrun.commands.export import run_export  # noqa: E402


def main() -> int:
    import torch

    work = Path(tempfile.mkdtemp(prefix="mlrun-bench-export-"))
    trained = subprocess.run(
        [sys.executable, "-m", "mlrun", "train", str(REPO / "configs" / "digits_wide_mlp.yaml"), f"output_dir={work}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if trained.returncode != 0:
        print(trained.stderr)
        return 1
    run = work / "digits_wide_mlp"
    rows = []
    for fmt in ("safetensors", "pt2", "onnx", "torchscript"):
        for quantize in ("int8", "int8-static"):
            out = work / "export" / f"{fmt}-{quantize}"
            run_export(run, fmt, quantize, "final", out, calibration_batches=8, verify=True, json_output=False)
            info = json.loads((out / "export.json").read_text())
            v = info["verification"]
            rows.append(
                {
                    "format": fmt,
                    "quantize": quantize,
                    "size_ratio": round(v["size_ratio_to_fp32"], 3),
                    "speedup_b64": round(v["speedup_b64"], 2),
                    "speedup_b1": round(v["speedup_b1"], 2),
                    "metric_drop_points": round(-100 * v["metric_change"], 2),
                    "accuracy_fp32": round(v["metric_fp32"], 4),
                    "class_agreement": round(v["class_agreement"], 4),
                }
            )
    print(f"\n{'format':<12} {'quant':<12} {'size x':>7} {'b64 x':>6} {'b1 x':>6} {'drop pts':>8} {'agree':>6}")
    failed = []
    for r in rows:
        print(
            f"{r['format']:<12} {r['quantize']:<12} {r['size_ratio']:>7} {r['speedup_b64']:>6} {r['speedup_b1']:>6} "
            f"{r['metric_drop_points']:>8} {r['class_agreement']:>6}"
        )
        meets = r["size_ratio"] <= 0.3 and r["speedup_b64"] >= 1.5 and r["metric_drop_points"] <= 0.5
        if r["quantize"] == "int8" and not meets:
            failed.append(f"{r['format']}-int8")
    print(
        json.dumps(
            {
                "bench": "export",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "rows": rows,
                "failed": failed,
            }
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
