"""One module per command; each exposes `run_<command>(...)` called by `mlrun.cli`."""
