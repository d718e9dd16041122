"""``python -m collab_app models list|current|promote|rollback``: choose the version the app serves.

The one command over ``simulators.llm.registry`` (``training loop`` writes the versions it lists).

A running app started with ``--model current`` (the default) picks the change up for its next
session, without a restart; sessions in progress keep their version.
"""

from __future__ import annotations

import argparse
import json
import time

from simulators.llm.registry import ModelRegistry, RegistryError


def version_rows(registry: ModelRegistry) -> list[dict]:
    current = registry.current()
    return [{"version": v.id, "current": current is not None and v.id == current.id, "parent": v.parent,
             "base": v.base, "algorithm": v.meta.get("algorithm"), "promoted": v.meta.get("promoted"),
             "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.meta.get("created", 0))),
             "metrics": v.meta.get("metrics", {})} for v in registry.list_versions()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m collab_app models", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["list", "current", "promote", "rollback"],
                        help="list versions; current: the version served; promote VERSION; "
                             "rollback [VERSION | base] (default: the current version's parent)")
    parser.add_argument("version", nargs="?", default="", help="a version id such as v0002, or 'base'")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    registry = ModelRegistry()
    try:
        if args.action == "current":
            current = registry.current()
            print(json.dumps({"current": current.id if current else None}) if args.json else
                  (current.id if current else "the base model (no version promoted)"))
        elif args.action == "promote":
            if not args.version:
                parser.error("promote needs a VERSION")
            print(f"serving {registry.set_current(args.version, reason='promote').id}")
        elif args.action == "rollback":
            if args.version == "base":
                registry.serve_base()
                print("serving the base model")
            else:
                print(f"serving {registry.rollback(args.version or None).id}")
        else:
            rows = version_rows(registry)
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print(f"no versions yet in {registry.root}: train one with python -m training loop")
            for row in rows if not args.json else []:
                print(f"{'*' if row['current'] else ' '} {row['version']}  parent={row['parent'] or '-':6} "
                      f"{row['algorithm'] or '-':6} {row['created']}  {json.dumps(row['metrics'])[:80]}")
    except RegistryError as exc:
        print(f"error: {exc}")
        return 2
    return 0
