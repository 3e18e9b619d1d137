"""`python -m mlrun` runs the same CLI as the `mlrun` console script."""

from mlrun.cli import main

main()
