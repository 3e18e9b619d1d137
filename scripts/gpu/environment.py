"""The GPU machine as one JSON document: device, driver, torch/CUDA builds, and which packages import.

python scripts/gpu/environment.py           # JSON on stdout (scripts/gpu/run_all.sh keeps it as env.json)
python scripts/gpu/environment.py --check   # exit 1 when a package of mlrun[all,dev] is missing
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys

# Import names of mlrun's dependencies, core first, then the extras [all,dev] install.
CORE = ["torch", "accelerate", "typer", "yaml", "rich", "pydantic", "numpy", "safetensors"]
EXTRAS = [
    "sklearn",
    "pandas",
    "pyarrow",
    "PIL",
    "tokenizers",
    "datasets",
    "tensorboard",
    "optuna",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "torchao",
    "transformers",
    "peft",
    "torch_pruning",
    "plotly",
    "psycopg2",
    "pynvml",
    "pytest",
    "ruff",
    "jsonschema",
]
GPU = ["triton"]  # torch.compile's GPU code generator: comes with CUDA torch wheels, not with mlrun


def missing(names: list[str]) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def nvidia_smi() -> str | None:
    query = "name,driver_version,memory.total,power.limit,clocks.max.sm,compute_cap"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def torch_build() -> dict:
    import torch

    build = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        build |= {
            "device": torch.cuda.get_device_name(0),
            "device_count": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    return build


def main() -> int:
    lacking = missing(CORE) + missing(EXTRAS)
    if "--check" in sys.argv:
        if lacking:
            print(f"missing: {', '.join(lacking)}")
        return 1 if lacking else 0
    report = {"python": platform.python_version(), "platform": platform.platform(), "nvidia_smi": nvidia_smi()}
    report |= {"missing_core": missing(CORE), "missing_extras": missing(EXTRAS), "missing_gpu": missing(GPU)}
    if "torch" not in report["missing_core"]:
        report |= torch_build()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
