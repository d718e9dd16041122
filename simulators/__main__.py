"""``python -m simulators``: self-check task files, score rollouts, run simulated rollouts.

Every command prints its progress to stderr and a one-line JSON summary as the last line of
stdout, so scripts can parse it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from simulators.dataclass_args import add_dataclass_arguments, config_from_args
from simulators.llm.base import ModelError
from simulators.rollout import RolloutConfig
from simulators.tasks import TaskFileError, load_tasks, read_task_file
from simulators.trajectories import load_episodes, write_episodes


def cmd_check_tasks(args: argparse.Namespace) -> int:
    from simulators.scoring import check_tasks

    report = load_tasks(args.file)
    checks = check_tasks(report.items, args.scoring)
    for error in report.errors:
        print(f"MALFORMED {error}")
    for check in checks:
        if not check.ok:
            print(f"FAIL {check.task_id} ({check.source}): " + "; ".join(check.problems))
    ok = sum(c.ok for c in checks)
    total = len(checks) + len(report.errors)
    print(json.dumps({"file": args.file, "scoring": args.scoring, "tasks": total, "ok": ok, "failed": total - ok,
                      "malformed_lines": len(report.errors)}))
    return 0 if ok == total else 1


def summarize(episodes: Sequence) -> dict:
    """n, the mean of every numeric score over the episodes that have it, and each backend
    scorer's numbers (``by_scorer``) once episodes carry them."""
    from simulators.scoring import by_scorer_summary

    summary: dict = {"n": len(episodes)}
    keys = sorted({k for e in episodes for k, v in e.scores.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in keys:
        values = [e.scores[key] for e in episodes if isinstance(e.scores.get(key), (int, float))]
        summary[key] = round(sum(values) / len(values), 4)
    successes = [e.scores["success"] for e in episodes if "success" in e.scores]
    if successes:
        summary["success_rate"] = round(sum(map(bool, successes)) / len(successes), 4)
    rewards = [e.reward for e in episodes if e.reward is not None]
    if rewards:
        summary["reward"] = round(sum(rewards) / len(rewards), 4)
    notes = sorted({e.scores["clip_unavailable"] for e in episodes if e.scores.get("clip_unavailable")})
    if notes:
        summary["clip_unavailable"] = notes[0]
    scorers = by_scorer_summary(episodes)
    if scorers:
        summary["by_scorer"] = scorers
    return summary


def cmd_evaluate(args: argparse.Namespace) -> int:
    from simulators.scoring import score_episodes

    report = load_episodes(args.file)
    for error in report.errors:
        print(f"skipped {error}", file=sys.stderr)
    episodes = report.items
    score_episodes(episodes, args.scoring)
    if not args.no_write:
        write_episodes(episodes, args.file)  # rewards written back, like the reference scripts
    print(json.dumps(summarize(episodes)))
    return 0 if episodes else 1


def cmd_rollout(args: argparse.Namespace) -> int:
    from simulators.humans import SimulatedHuman
    from simulators.llm import load_model
    from simulators.llm.openai_client import use_concurrency
    from simulators.rollout import run_rollouts

    config = config_from_args(RolloutConfig, args)
    if not config.tasks:
        print("rollout: --tasks FILE is required ('samples' for our sample tasks)", file=sys.stderr)
        return 2
    tasks = read_task_file(config.tasks, config.kind, config.limit)
    agent = load_model(config.agent)
    simulator = agent if config.simulator == config.agent else load_model(config.simulator)
    use_concurrency(args.concurrency, simulator)
    # Lockstep: a batch bounds what is in flight. (A local agent keeps its own batch size: its memory.)
    if use_concurrency(args.concurrency, agent):
        config.batch_size = max(config.batch_size, args.concurrency)
    human = SimulatedHuman(simulator, max_new_tokens=config.simulator_max_new_tokens,
                           vision=config.simulator_vision)
    run_rollouts(tasks, agent, human, config)
    print(json.dumps({"out": config.out, **summarize(load_episodes(config.out).items)}))
    return 0


def add_scoring_argument(parser: argparse.ArgumentParser) -> None:
    from simulators.scoring import SCORERS

    parser.add_argument("--scoring", choices=SCORERS, default="ours",
                        help="backend scorer: 'ours' (sandboxed, fair; default) or 'colbench' (the reference "
                             "implementation's rules, to compare with the paper and HAL)")


def add_concurrency_argument(parser: argparse.ArgumentParser) -> None:
    from simulators.llm.openai_client import DEFAULT_CONCURRENCY

    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                        help="requests in flight at once to an openai: agent or simulator (sized for `vllm serve`); "
                             "with an openai: agent, --batch-size is raised to N so that N episodes advance together "
                             f"(default: {DEFAULT_CONCURRENCY})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulators", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check-tasks", help="run every task's reference against itself")
    check.add_argument("file", help="ColBench-format task file (JSONL)")
    add_scoring_argument(check)
    check.set_defaults(run=cmd_check_tasks)

    evaluate = commands.add_parser("evaluate", help="score a rollout file (sweet_rl JSONL) in place")
    evaluate.add_argument("file", help="trajectory JSONL: {task, dialogue_history, answer, reward}")
    evaluate.add_argument("--no-write", action="store_true", help="do not write the scores back")
    add_scoring_argument(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    rollout = commands.add_parser("rollout", help="simulated collaborations -> sweet_rl JSONL",
                                  description=RolloutConfig.__doc__)
    add_dataclass_arguments(rollout, RolloutConfig)
    add_concurrency_argument(rollout)
    rollout.set_defaults(run=cmd_rollout)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (TaskFileError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
