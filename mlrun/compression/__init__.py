"""`mlrun compress`: stages that make a trained model small and fast, chained from its weights.

Each stage is a registry entry (`mlrun list stages`, package `mlrun.compression.stages`) that edits
the model and says how its fine-tuning differs from plain training; `run.py` chains the stages,
fine-tunes through the one training loop and measures every result (`measure.py`).
"""
