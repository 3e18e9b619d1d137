"""The engine: build components from a config, run the one training loop, checkpoint and resume."""
