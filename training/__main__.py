"""``python -m training``: critic | actor | rft | mtdpo | evaluate | loop | experiment.

The versions ``loop`` writes are listed, promoted and rolled back with ``python -m collab_app models``
(the one registry command).

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

from simulators.dataclass_args import add_dataclass_arguments, config_from_args
from simulators.llm.base import ModelError
from simulators.llm.registry import RegistryError
from simulators.tasks import TaskFileError
from training.actor import ActorConfig
from training.baselines import MTDPOConfig, RFTConfig
from training.critic import CriticConfig
from training.evaluate import EvaluateConfig
from training.experiment import PRESETS, ExperimentConfig
from training.iteration import IterationConfig


def run_command(config_cls, target: str, args: argparse.Namespace) -> dict:
    """Import ``module:function`` only when its command runs (torch and transformers load slowly)."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(config_from_args(config_cls, args))


COMMANDS = {
    "critic": (CriticConfig, "training.critic:train_critic", "train the step-level critic (Eq. 2-3)"),
    "actor": (ActorConfig, "training.actor:train_actor", "sample, rank with the critic, train the actor (Eq. 4)"),
    "rft": (RFTConfig, "training.baselines:train_rft", "baseline: rejection fine-tuning"),
    "mtdpo": (MTDPOConfig, "training.baselines:train_mtdpo", "baseline: multi-turn DPO"),
    "evaluate": (EvaluateConfig, "training.evaluate:run_evaluation", "rollouts, metrics, win rate; best-of-N with --critic"),
    "loop": (IterationConfig, "training.iteration:run_iteration", "one SWEET iteration -> a new actor version in the registry"),
    # the config class is the --preset's (build_parser)
    "experiment": (ExperimentConfig, "training.experiment:run_experiment",
                   "zero-shot vs SWEET-RL vs baselines (+ critic ablations) on one held-out split, paired 95%% CIs"),
}


def experiment_preset(argv: list[str]) -> str:
    """The ``--preset`` of an ``experiment`` command line (its options default to that preset's values)."""
    if not argv or argv[0] != "experiment":
        return "cpu-small"
    first = argparse.ArgumentParser(prog="python -m training experiment", add_help=False, allow_abbrev=False)
    first.add_argument("--preset", choices=list(PRESETS), default="cpu-small")
    return first.parse_known_args(argv[1:])[0].preset


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; ``argv`` picks the experiment's preset first, so that its options default to
    the preset's values (shown by ``--help``) and any option given overrides them."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (config_cls, target, summary) in COMMANDS.items():
        if name == "experiment":
            config_cls = PRESETS[experiment_preset(argv or [])]
        sub = commands.add_parser(name, help=summary, description=config_cls.__doc__)
        add_dataclass_arguments(sub, config_cls)
        sub.set_defaults(run=functools.partial(run_command, config_cls, target))
    # --db is the session database, a synonym of --data for the loop
    commands.choices["loop"].add_argument("--db", dest="data", default=argparse.SUPPRESS, metavar="PATH",
                                          help="the app's session database (same as --data PATH)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        result = args.run(args)
    except (TaskFileError, ModelError, RegistryError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
