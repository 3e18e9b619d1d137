"""`mlrun init [PATH]`: a commented starter config that validates and trains as written."""

from __future__ import annotations

from pathlib import Path

from mlrun.errors import UsageError

STARTER = """\
# A starter mlrun config: an MLP on scikit-learn's 8x8 digits, about a minute on a laptop CPU.
# Train it with `mlrun train {path}`; change any key from the command line, e.g. train.epochs=3.
# `mlrun list` shows every model, dataset, optimizer and schedule with its settings.
name: starter                    # run directory: <output_dir>/<name>
seed: 0                          # seeds python, numpy, torch and the data order
output_dir: runs

model:
  name: mlp                      # a registry name, or "package.module:function" for your own model
  hidden_sizes: [256, 128]       # every other key is a setting of the model function
  dropout: 0.1

data:
  name: digits                   # loaded from the installed scikit-learn, no download
  val_fraction: 0.2              # stratified hold-out for validation
  batch_size: 64
  num_workers: 0

loss: cross_entropy
metrics: [accuracy, f1]

optimizer:
  name: adamw                    # no weight decay on biases and norm weights
  lr: 3.0e-3
  weight_decay: 0.01

scheduler:
  name: cosine
  warmup_steps: 50               # linear warm-up from warmup_start_factor * lr

train:
  epochs: 15                     # or max_steps; whichever ends first
  precision: fp32                # fp32 | bf16 | fp16 (fp16 needs a GPU)
  max_grad_norm: 1.0
  eval_every: 1ep                # "1ep" every epoch, "200st" every 200 optimizer steps
  log_every: 20st
  checkpoint_every: 1ep          # runs resume from their newest checkpoint
  best: {monitor: val/accuracy, mode: max}
  early_stopping: {monitor: val/accuracy, mode: max, patience: 5}

tracking: [console, jsonl]
"""


def run_init(path: Path, force: bool) -> None:
    from mlrun.commands.usage import write_named_file

    if path.is_dir():  # --force would not help: a folder is not overwritten by a file
        raise UsageError(f"'{path}' is a folder: give the config file's path, e.g. {path / 'config.yaml'}")
    if path.exists() and not force:
        raise UsageError(f"'{path}' already exists: pass --force to overwrite it, or give another path.")
    write_named_file(path, STARTER.replace("{path}", str(path)), "init")
    print(f"mlrun: wrote {path}; train it with `mlrun train {path}`")
