"""Parsing of the `get_config(arg)` string of configs/*.py: 'key=value,key=value,flag'."""

from __future__ import annotations


def parse_config_arg(arg: str | None, defaults: dict, source: str) -> dict:
    """Returns `defaults` updated from `arg`. Keys with a boolean default are flags (given
    bare, e.g. `synthetic`); the others need a value. Anything else raises a ValueError naming
    `source` (the config file) and the accepted keys."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        known = key in defaults
        is_flag = known and isinstance(defaults[key], bool)
        if known and is_flag and not eq:
            out[key] = True
        elif known and not is_flag and value:
            out[key] = value
        else:
            accepted = ", ".join(k if isinstance(v, bool) else f"{k}=..." for k, v in defaults.items())
            raise ValueError(f"{source}: unknown config argument {item!r}; accepted: {accepted}")
    return out
