"""A CSV file written with another delimiter than the one it is read with, named before it is read.

European Excel saves CSV with ';' (the comma is its decimal mark) and many exports use tabs. Read with
',', such a file is one column named 'a;b;c;target', and the user met a message far from the cause:
"data.target: column 'target' is not in 'data.csv'. Did you mean 'a;b;c;target'?".
"""

from __future__ import annotations

import json
from pathlib import Path

from mlrun.errors import UsageError

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
    shown = name if len(name) <= 60 else name[:60] + "..."
    raise UsageError(
        f"{key}: '{file}' looks {NAMES[found]}-separated: read with {delimiter!r} its header is one column "
        f"({shown!r}) holding {name.count(found)} {NAMES[found]}(s). {advice}."
    )
