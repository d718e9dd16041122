"""``python -m training``: critic | actor | rft | mtdpo | evaluate | loop | registry.

Each training command takes a dataclass config (``--help`` lists every option with its default),
shows progress bars, writes ``log.jsonl`` and ``curves.png`` in its ``--out`` directory, and prints
a one-line JSON summary as the last line of stdout.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import sys

from simulators.config import add_dataclass_arguments, config_from_args
from simulators.llm.base import ModelError
from simulators.registry import ModelRegistry, RegistryError
from simulators.tasks import TaskFileError
from training.actor import ActorConfig
from training.baselines import MTDPOConfig, RFTConfig
from training.critic import CriticConfig
from training.evaluate import EvaluateConfig
from training.loop import LoopConfig


def run_command(config_cls, target: str, args: argparse.Namespace) -> dict:
    """Import ``module:function`` only when its command runs (torch and transformers load slowly)."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(config_from_args(config_cls, args))


def cmd_registry(args):
    registry = ModelRegistry()
    if args.action == "list":
        current = registry.current()
        return {"versions": [{"id": v.id, "parent": v.parent, "base": v.base, "algorithm": v.meta.get("algorithm"),
                              "promoted": v.meta.get("promoted"), "current": current is not None and v.id == current.id}
                             for v in registry.list_versions()]}
    if args.action == "current":
        current = registry.current()
        return {"current": current.id if current else None}
    if args.action == "set-current":
        return {"current": registry.set_current(args.version).id}
    return {"current": registry.rollback(args.version or None).id}


COMMANDS = {
    "critic": (CriticConfig, "training.critic:train_critic", "train the step-level critic (Eq. 2-3)"),
    "actor": (ActorConfig, "training.actor:train_actor", "sample, rank with the critic, train the actor (Eq. 4)"),
    "rft": (RFTConfig, "training.baselines:train_rft", "baseline: rejection fine-tuning"),
    "mtdpo": (MTDPOConfig, "training.baselines:train_mtdpo", "baseline: multi-turn DPO"),
    "evaluate": (EvaluateConfig, "training.evaluate:run_evaluation", "rollouts, metrics, win rate; best-of-N with --critic"),
    "loop": (LoopConfig, "training.loop:run_loop", "one SWEET iteration -> a new actor version in the registry"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (config_cls, target, summary) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=config_cls.__doc__)
        add_dataclass_arguments(sub, config_cls)
        sub.set_defaults(run=functools.partial(run_command, config_cls, target))
    # --db is the session database, a synonym of --data for the loop
    commands.choices["loop"].add_argument("--db", dest="data", default=argparse.SUPPRESS, metavar="PATH",
                                          help="the app's session database (same as --data PATH)")
    registry = commands.add_parser("registry", help="list versions, show/set the current one, roll back "
                                   "($COLLAB_HOME/models/registry)")
    registry.add_argument("action", choices=["list", "current", "set-current", "rollback"])
    registry.add_argument("version", nargs="?", default="", help="version id (set-current; rollback: default = parent)")
    registry.set_defaults(run=cmd_registry)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except (TaskFileError, ModelError, RegistryError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
