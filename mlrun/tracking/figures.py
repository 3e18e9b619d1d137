"""The one number format of mlrun's printed figures: four significant digits.

Values from 0.001 to 99999 are written out (0.6172, 0.009670; 12960 from 12960.4: whole numbers
keep their digits); smaller and larger ones in scientific notation with the same four digits
(8.300e-04). Log lines, evaluation lines, the final summary and `mlrun compare` all use it.
Config values (a learning rate in compare's table, a trial's sampled settings) keep the same four
digits without trailing zeros, as a user writes them: `format_setting`.
"""

from __future__ import annotations

import math

SIGNIFICANT = 4


def format_figure(value: float) -> str:
    """A figure as text; whole numbers (steps, counts) stay whole."""
    if isinstance(value, (bool, int)) or not isinstance(value, float):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    # the magnitude after rounding to four digits: 9.99996 is written as 10.00, not 10.000
    magnitude = math.floor(math.log10(abs(float(f"{value:.{SIGNIFICANT - 1}e}"))))
    if -3 <= magnitude < 5:
        return f"{value:.{max(0, SIGNIFICANT - 1 - magnitude)}f}"
    return f"{value:.{SIGNIFICANT - 1}e}"


def format_setting(value: object) -> str:
    """A config value as a user would write it, with at most four significant digits: lr 0.003, not
    0.003000; 1e+08, not 100000000.0; a sampled 0.08311, not 0.08311303692128176. Other values as text."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{SIGNIFICANT}g}"
    return str(value)


def format_bytes(count: int) -> str:
    """A size in the unit that keeps four significant digits readable: 812 B, 2.610 KB, 145.3 KB, 1.234 MB.
    (Megabytes alone printed a 2.6 KB model as 0.00.)"""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{format_figure(count / scale)} {unit}"
    return f"{count} B"
