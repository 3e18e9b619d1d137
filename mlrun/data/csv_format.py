"""How a CSV file is written (its delimiter and decimal mark), and the checks that name a file written
otherwise than it is read.

European Excel saves CSV with ';' between columns and ',' as the decimal mark, and many exports use tabs.
Read with ',', such a file is one column named 'a;b;c;target', and the user met a message far from the
cause: "data.target: column 'target' is not in 'data.csv'. Did you mean 'a;b;c;target'?". Read with ';'
but a decimal point, its numbers ('0,126') were text columns, one-hot encoded without a word.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

from mlrun.errors import UsageError


@dataclass(frozen=True)
class CsvFormat:
    """A CSV's column delimiter and decimal mark (the csv source's data.delimiter and data.decimal)."""

    delimiter: str = ","
    decimal: str = "."

    @classmethod
    def of_settings(cls, settings: dict) -> CsvFormat:
        """A csv run's format from its data settings (predict reads new files as the run read its own)."""
        return cls(**{name: settings[name] for name in SETTINGS if name in settings})


SETTINGS = tuple(field.name for field in fields(CsvFormat))  # the csv source's settings that parquet lacks


# 0,126; a thousands group (1,234) reads alike, so the message names that case too.
DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d+,\d+\s*$")
NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}  # the delimiters a header is checked for


def check_delimiter(file: Path, key: str, delimiter: str) -> None:
    """Exit 2 when the header of `file`, read with `delimiter`, is one column holding another common delimiter.

    The header is parsed by pandas (nrows=0), so compressed files and quoted names read as they will be read;
    a header of several columns is never questioned. `key` is the setting that named the file (data.path,
    data.val_path) or INPUT (predict, which reads with a csv run's data.delimiter, else ',')."""
    import pandas as pd

    try:
        header = pd.read_csv(file, nrows=0, sep=delimiter).columns
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the read that follows
        return
    if len(header) != 1:
        return
    name = str(header[0])
    found = next((mark for mark in NAMES if mark != delimiter and mark in name), None)
    if found is None:
        return
    if key == "INPUT":
        advice = f"Save it with {delimiter!r} between the columns, as this run reads tables"
    else:
        value = json.dumps(found)  # as YAML reads it: "\t" in double quotes is a tab, in single quotes two characters
        advice = f"Set data.delimiter: {value} to read it so, or save it with {delimiter!r} between the columns"
        if found == ";":  # the Excel that writes ';' writes decimal commas too
            advice += ' (with data.decimal: "," if its numbers are written 0,5)'
    shown = name if len(name) <= 60 else name[:60] + "..."
    raise UsageError(
        f"{key}: '{file}' looks {NAMES[found]}-separated: read with {delimiter!r} its header is one column "
        f"({shown!r}) holding {name.count(found)} {NAMES[found]}(s). {advice}."
    )


def check_decimal_commas(frame, columns: list[str], file: Path, csv: CsvFormat) -> None:
    """Exit 2 when a text column (of `columns`, those inferred categorical) holds numbers written with a
    decimal comma, read with a decimal point: it would be one-hot encoded as text."""
    if csv.decimal == ",":
        return
    for column in columns:
        values = frame[column].dropna().astype(str)
        if len(values) and values.str.match(DECIMAL_COMMA).mean() >= 0.8:
            shown = ", ".join(repr(v) for v in values.head(3))
            raise UsageError(
                f"data: column '{column}' of '{file}' holds numbers written with a decimal comma ({shown}), "
                'read as text, so it would be one-hot encoded. Set data.decimal: "," to read them as numbers '
                '(with data.delimiter: ";" as European Excel saves CSV); if the commas group thousands (1,234), '
                "save the column without them; if it is meant as categories, list it in data.categorical."
            )
