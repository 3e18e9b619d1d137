"""`mlrun tune`: the search space, Optuna studies, trials as full runs, population-based training."""
