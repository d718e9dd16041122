"""``python -m collab_app``: the collaboration app and its companion commands.

    python -m collab_app [APP FLAGS]            run the Gradio app (default)
    python -m collab_app serve-model [FLAGS]    OpenAI-compatible HTTP server over a local model
    python -m collab_app export [FLAGS]         sessions -> sweet_rl JSONL, TRL pairs, HF dataset
    python -m collab_app models ACTION          list | current | promote VERSION | rollback [VERSION|base]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass, field

from simulators.dataclass_args import add_dataclass_arguments, config_from_args

# Gradio must never phone home: set before anything imports it.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@dataclass
class AppConfig:
    """Settings of the app; every field is a ``--flag`` of ``python -m collab_app``."""

    model: str = field(default="current", metadata={
        "help": "agent model: 'current' (the model registry's current version, else --base; "
                "follows promotions and rollbacks without a restart), 'default', 'registry:VERSION', "
                "a local HF directory or hub id, or 'openai:BASE_URL#MODEL' for an endpoint such as vllm serve"})
    base: str = field(default="default", metadata={
        "help": "base model under --model current: served while the registry has no current version, "
                "and what the Train tab's runs start from then"})
    simulator: str = field(default="default", metadata={
        "help": "model of the simulated human ('Suggest a reply', 'Let the simulator play', the Train "
                "tab's evaluation); same spec forms as --model"})
    tasks: list[str] = field(default_factory=list, metadata={
        "help": "ColBench-format task file to offer besides our samples (repeat for several)"})
    db: str = field(default="", metadata={"help": "session database; empty means $COLLAB_HOME/collab.sqlite"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind; 127.0.0.1 keeps the app private to this machine"})
    port: int = field(default=7860, metadata={"help": "port to listen on"})
    auth: list[str] = field(default_factory=list, metadata={
        "help": "require a login, as USER:PASSWORD (repeat the flag for several users)"})
    auth_file: str | None = field(default=None, metadata={
        "help": "file of USER:PASSWORD lines (blank lines and # comments ignored)"})
    max_message_chars: int = field(default=20_000, metadata={
        "help": "longest message a person may send; longer ones are refused with a notice"})
    max_new_tokens: int = field(default=512, metadata={"help": "longest agent reply, in tokens"})
    arena_models: str = field(default="", metadata={
        "help": "comma-separated model specs the Compare tab's blind arena draws its pairs from; empty = "
                "the model registry's versions plus --base"})

    def credentials(self) -> list[tuple[str, str]]:
        """Parse --auth and --auth-file into (user, password) pairs; raise ValueError on bad lines."""
        lines = [(f"--auth {i + 1}", a) for i, a in enumerate(self.auth)]
        if self.auth_file:
            with open(self.auth_file, encoding="utf-8") as fh:
                lines += [(f"{self.auth_file}:{n}", ln.strip()) for n, ln in enumerate(fh, 1)
                          if ln.strip() and not ln.lstrip().startswith("#")]
        pairs = []
        for where, entry in lines:
            user, sep, password = entry.partition(":")
            if not sep or not user or not password:
                raise ValueError(f"{where}: expected USER:PASSWORD")
            pairs.append((user, password))
        return pairs


SUBCOMMANDS = {
    "serve-model": "OpenAI-compatible HTTP server over a model (serve-model --help)",
    "models": "list trained actor versions, show the current one, promote one, roll back (models --help)",
    "export": "export sessions as sweet_rl JSONL, TRL preference pairs or a HF dataset (export --help)",
    "leaderboard": "Bradley–Terry ratings from Compare-tab votes, with automatic scores (leaderboard --help)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m collab_app",
        description="collab-rl: collaborate with an LLM agent on ColBench tasks in the browser. "
                    "With no command, runs the app.",
    )
    add_dataclass_arguments(parser, AppConfig)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, helptext in SUBCOMMANDS.items():
        commands.add_parser(name, add_help=False, help=helptext)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SUBCOMMANDS:  # each command parses its own flags
        module = importlib.import_module(f"collab_app.commands.{argv[0].replace('-', '_')}")
        return module.main(argv[1:]) or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(AppConfig, args)
    try:
        credentials = config.credentials()
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    from collab_app.app import launch

    launch(config, credentials)
    return 0
