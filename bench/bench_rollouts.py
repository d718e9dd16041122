"""Benchmark rollouts (issue 12): today's code against the code before issue 12, in the same run.

Both play the same episodes with ``python -m simulators rollout``: the default model as agent and
simulated human, our backend sample tasks (``--limit`` of them, ``--samples`` episodes each), the
default ``RolloutConfig`` otherwise (temperature 0.7, 512-token agent turns, 160-token simulator
replies, 10 rounds, batch 8). The code before issue 12 (commit ``--baseline``, 4e5e5f8) is checked
out once as a git worktree (``--baseline-dir``) and run with the same ``.venv`` Python, its own
tree first on ``PYTHONPATH``. Runs alternate (baseline first in odd repetitions, ours first in even
ones); scoring is off in both (``--no-score``: the sandbox is not what is measured). Reported per
run: wall seconds (model loading included, about 2 s), CPU seconds of the child, episodes per hour;
and the ratio of the medians. Each run's episodes are compared with the baseline's, pair by pair
(same task, same sample): how many are identical turn for turn.

``--baseline-threads``: torch threads of the baseline runs, comma-separated to run several (0 =
torch's default, one per core, as the code before issue 12 ran; 1 = the thread count our runs
pick on a busy machine, which separates the algorithmic gain from the thread cap). Ours run with
``--threads`` (0 = ``simulators.llm.local.idle_cpu_threads``, the rollout default).

Run from the repository root::

    .venv/bin/python bench/bench_rollouts.py                      # headline: default settings
    .venv/bin/python bench/bench_rollouts.py --max-rounds 2       # quick mode
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def ensure_baseline(commit: str, directory: Path) -> Path:
    """A detached worktree of ``commit`` at ``directory`` (made once; reused while it is at that commit)."""
    if (directory / ".git").exists():
        head = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        wanted = subprocess.run(["git", "-C", str(REPO), "rev-parse", commit], capture_output=True, text=True,
                                check=True).stdout.strip()
        if head != wanted:
            raise SystemExit(f"{directory} is a checkout of {head[:10]}, not {commit}: remove it "
                             f"(git worktree remove {directory}) or pass another --baseline-dir")
        return directory
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(directory), commit], check=True,
                   capture_output=True)
    return directory


def rollout(tree: Path, out: Path, args, threads: int, ours: bool) -> dict:
    """One ``python -m simulators rollout`` of ``tree``; its wall and CPU seconds."""
    command = [sys.executable, "-m", "simulators", "rollout", "--tasks", args.tasks, "--kind", "backend",
               "--limit", str(args.limit), "--best-of-n", str(args.samples), "--max-rounds", str(args.max_rounds),
               "--agent", "default", "--simulator", "default", "--out", str(out), "--no-score"]
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    if ours:
        command += ["--threads", str(threads)]
    elif threads > 0:  # the code before issue 12 has no --threads: torch reads OMP_NUM_THREADS
        env["OMP_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"rollout in {tree} failed:\n{done.stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)}


def dialogues(path: Path) -> dict[tuple[str, int], list[tuple[str, str]]]:
    from simulators.trajectories import load_episodes

    return {e.sample_key: [(t.role, t.content) for t in e.turns]
            for e in load_episodes(path).items}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="samples", help="task file, or 'samples' (ours, backend ones used)")
    parser.add_argument("--limit", type=int, default=4, help="tasks")
    parser.add_argument("--samples", type=int, default=2, help="episodes per task (--best-of-n)")
    parser.add_argument("--max-rounds", type=int, default=10, help="agent turns per episode (10: the default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, alternating")
    parser.add_argument("--baseline", default="4e5e5f8", help="commit of the code before issue 12")
    parser.add_argument("--baseline-dir", type=Path, default=Path(tempfile.gettempdir()) / "rollout_baseline")
    parser.add_argument("--baseline-threads", default="0", help="comma-separated torch threads of baseline runs "
                        "(0 = torch's default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of our runs (0 = rollout default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    baseline = ensure_baseline(args.baseline, args.baseline_dir)
    variants = [("baseline", int(t)) for t in args.baseline_threads.split(",")] + [("ours", args.threads)]
    episodes = args.limit * args.samples
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        reference = None
        for repeat in range(args.repeats):
            for name, threads in (variants if repeat % 2 == 0 else variants[::-1]):
                label = f"{name} (threads {threads or 'default' if name == 'baseline' else threads or 'auto'})"
                out = Path(scratch) / f"{name}-{threads}-{repeat}.jsonl"
                load = os.getloadavg()[0]
                result = rollout(baseline if name == "baseline" else REPO, out, args, threads, ours=name == "ours")
                result["load_before"] = round(load, 1)
                result["episodes_per_hour"] = round(episodes / result["wall_s"] * 3600, 1)
                played = dialogues(out)
                if reference is None and name == "baseline":
                    reference = played
                if reference is not None:
                    result["identical_to_first_baseline"] = sum(played.get(k) == v for k, v in reference.items())
                runs.setdefault(label, []).append(result)
                print(json.dumps({"run": label, "repeat": repeat, **result}), flush=True)

    ours_label = next(label for label in runs if label.startswith("ours"))
    ours_rate = statistics.median(r["episodes_per_hour"] for r in runs[ours_label])
    print(f"\n{episodes} episodes ({args.limit} backend sample tasks x {args.samples}), {args.max_rounds} rounds, "
          f"default model as agent and simulator, median of {args.repeats}")
    print(f"| {'run':<28} | wall s | CPU s | episodes/h | ours vs this | identical episodes |")
    print(f"|{'-' * 30}|-------:|------:|-----------:|-------------:|-------------------:|")
    summary = {}
    for label, results in runs.items():
        wall = statistics.median(r["wall_s"] for r in results)
        cpu = statistics.median(r["cpu_s"] for r in results)
        rate = statistics.median(r["episodes_per_hour"] for r in results)
        same = min(r.get("identical_to_first_baseline", 0) for r in results)
        summary[label] = {"wall_s": wall, "cpu_s": cpu, "episodes_per_hour": rate, "speedup": round(ours_rate / rate, 2),
                          "identical": same, "runs": results}
        print(f"| {label:<28} | {wall:6.0f} | {cpu:5.0f} | {rate:10.1f} | {ours_rate / rate:11.2f}x | "
              f"{same:>10}/{episodes} |")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"baseline_dir": str(args.baseline_dir),
                                                                   "json": str(args.json)},
                                         "results": summary}, indent=2))


if __name__ == "__main__":
    main()
