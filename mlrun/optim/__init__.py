"""Optimizers (`mlrun.optim.optimizers`) and learning-rate schedules (`mlrun.optim.schedulers`)."""
