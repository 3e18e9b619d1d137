"""Built-in datasets; importing the package registers them (registry `datasets`)."""

from mlrun.data import sklearn_sets, synthetic, text_lm  # noqa: F401
