"""Dataclass configs as command lines: one ``--flag`` per field, TRL-style.

Each command has a dataclass whose fields carry their default and a ``help`` in ``metadata``;
``--help`` then shows every default, and the code and the help text cannot drift apart.
"""

from __future__ import annotations

import argparse
from dataclasses import fields


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--flag`` per dataclass field, help text and default from the field (TRL-style)."""
    defaults = config_cls()
    for f in fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        helptext = f"{f.metadata.get('help', '')} (default: {default!r})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helptext)
        elif isinstance(default, list):
            parser.add_argument(flag, action="append", default=[], metavar=f.name.upper(), help=helptext)
        else:
            kind = int if isinstance(default, int) else float if isinstance(default, float) else str
            parser.add_argument(flag, type=kind, default=default, metavar=f.name.upper(), help=helptext)


def config_from_args(config_cls: type, args: argparse.Namespace):
    return config_cls(**{f.name: getattr(args, f.name) for f in fields(config_cls)})
