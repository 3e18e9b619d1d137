"""Durations of training written as '3ep' (epochs) or '200st' / 200 (optimizer steps).

Used by `train.eval_every`, `log_every`, `checkpoint_every` and the freeze technique's `unfreeze_every`:
`mlrun validate <config> train.eval_every=200st` checks one.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema


class Duration(NamedTuple):
    """A span of training: `count` epochs ("3ep") or optimizer steps ("200st" or a bare 200)."""

    count: int
    unit: Literal["ep", "st"]

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"

    def steps(self, steps_per_epoch: int) -> int:
        """The span in optimizer steps, for a run of `steps_per_epoch` steps an epoch."""
        return self.count * (steps_per_epoch if self.unit == "ep" else 1)


_DURATION = re.compile(r"^\s*(\d+)\s*(ep|st)?\s*$")


def parse_duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration like '1ep' or '200st'")
    if isinstance(value, int):
        count, unit = value, "st"
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"'{value}' is not a duration: write '<N>ep' (epochs) or '<N>st' (optimizer steps)")
        count, unit = int(match.group(1)), match.group(2) or "st"
    if count <= 0:
        raise ValueError("a duration must be at least 1")
    return Duration(count, unit)


DurationField = Annotated[
    Duration,
    BeforeValidator(parse_duration),
    PlainSerializer(str, return_type=str),
    # As parse_duration reads it: at least 1, spaces allowed ("1 ep").
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^\s*0*[1-9]\d*\s*(ep|st)?\s*$"}]}
    ),
]


def as_written(value: Any) -> Any:
    """A duration as a config writes it ('1ep'); anything else as it is (for schemas and listings, where
    pydantic and json would show the tuple, [1, "ep"], which no config accepts)."""
    if isinstance(value, Duration):
        return str(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], int) and value[1] in ("ep", "st"):
        return f"{value[0]}{value[1]}"
    return value
