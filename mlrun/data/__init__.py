"""Built-in datasets; importing the package registers them (registry `datasets`)."""

from mlrun.data import arrays, hf_disk, images, sklearn_sets, synthetic, tabular, text, text_lm  # noqa: F401
