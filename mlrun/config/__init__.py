"""The config layer: schema (pydantic models), load (YAML, base, overrides), component checks."""
