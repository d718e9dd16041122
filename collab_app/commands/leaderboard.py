"""``python -m collab_app leaderboard``: the ratings of ``collab_app.leaderboard``, as a table or JSON.

    python -m collab_app leaderboard --db PATH [--votes final|round|all] [--include-unblind]
                                     [--rollouts FILE]... [--plot PNG]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from collab_app.leaderboard import (
    BOOTSTRAP_ROUNDS,
    VOTE_SETS,
    format_table,
    leaderboard,
    left_out_note,
    ratings_figure,
)
from simulators.store import SessionStore


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m collab_app leaderboard",
                                     description="Bradley–Terry ratings from the Compare tab's votes, with "
                                                 "bootstrap intervals and automatic ColBench scores.")
    parser.add_argument("--db", default="", help="session database (default: $COLLAB_HOME/collab.sqlite)")
    parser.add_argument("--votes", choices=VOTE_SETS, default="final",
                        help="final: one overall vote per comparison (default); round: one per round; all: both")
    parser.add_argument("--include-unblind", action="store_true",
                        help="also rate the votes of the Compare tab's 'choose two models' mode (not blind)")
    parser.add_argument("--rollouts", action="append", default=[], metavar="FILE",
                        help="held-out rollout JSONL (sweet_rl layout) to score each model on; repeatable")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_ROUNDS, help="bootstrap resamples (0 = no CI)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--plot", metavar="PNG", help="also save the ratings chart as a PNG")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.db and not Path(args.db).is_file():
        parser.error(f"{args.db}: no such database")
    for path in args.rollouts:
        if not Path(path).is_file():
            parser.error(f"{path}: no such rollout file")
    rows = leaderboard(SessionStore(args.db or None), votes=args.votes, rollout_files=args.rollouts,
                       bootstrap_rounds=args.bootstrap, seed=args.seed, include_unblind=args.include_unblind)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(format_table(rows) if rows else "No votes or scored sessions yet.")
        note = left_out_note(SessionStore(args.db or None), args.votes, args.include_unblind)
        if note and rows:
            print("\n" + note)
    if args.plot:
        ratings_figure(rows).savefig(args.plot, dpi=120)
    return 0
