"""Commands whose machinery has not landed yet say so plainly, with exit code 2."""

from mlrun.errors import UsageError


def not_yet(command: str, feature: str) -> None:
    raise UsageError(f"`mlrun {command}` is not available in this version yet ({feature} is still to come).")
