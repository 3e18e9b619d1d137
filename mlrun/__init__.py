"""mlrun: a command-line training runner for PyTorch driven by YAML configs.

Importing this package is cheap (no torch): `mlrun --help` must answer fast.
"""

__version__ = "0.1.0"
