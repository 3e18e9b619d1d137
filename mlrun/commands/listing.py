"""`mlrun list [KIND] [--json]`: registered components with their settings and defaults."""

from __future__ import annotations

from mlrun.config.schema.duration import as_written
from mlrun.errors import UsageError, did_you_mean
from mlrun.jsonout import print_json
from mlrun.registry import REGISTRIES


def run_list(kind: str | None, json_output: bool) -> None:
    if kind is not None and kind not in REGISTRIES:
        raise UsageError(f"unknown kind '{kind}'.{did_you_mean(kind, REGISTRIES)} Kinds: {', '.join(REGISTRIES)}.")
    kinds = [kind] if kind else list(REGISTRIES)
    entries = {
        k: {
            name: {
                "summary": REGISTRIES[k].summary(name),
                "settings": [{**s.__dict__, "default": as_written(s.default)} for s in REGISTRIES[k].settings(name)],
            }
            for name in REGISTRIES[k].names()
        }
        for k in kinds
    }
    if json_output:
        print_json(entries)
        return
    for k, names in entries.items():
        print(f"{k}:")
        for name, entry in names.items():
            print(f"  {name:<24} {entry['summary']}")
            for s in entry["settings"]:
                default = "required" if s["required"] else f"= {s['default']!r}"
                help_text = f"  {s['help']}" if s["help"] else ""
                print(f"      {s['name']}: {s['annotation']} {default}{help_text}")
