"""Benchmark ColBench backend evaluation: our sandbox vs. plain in-process ``exec`` (issue 3).

Every task is scored with its own reference as the answer, so every test should pass:

* in-process -- the reference implementation's way: exec the reference and the answer in this
  process, eval each test call on both, compare with ``==`` (SIGALRM per call so a slow task
  cannot stall the run; run in a temporary working directory, because some tasks write files).
* sandboxed -- ``BackendEvaluator`` with a cold reference cache, servers started inside the
  timing: what scoring a fresh batch of episodes costs.
* sandboxed, reference cached -- the same answers scored again (best-of-N scoring).

Repetitions alternate the modes so that load from other processes hits both alike; medians are
reported. Besides wall-clock time, CPU time is reported (this process and, for the sandbox, its
servers and jobs), which other processes' load distorts far less. Run from the repository root::

    .venv/bin/python bench/bench_backend_eval.py --tasks /work/shared/colbench/backend_dev.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulators.backend_eval import PER_TEST_TIMEOUT_S, BackendEvaluator  # noqa: E402
from simulators.domain import Task  # noqa: E402
from simulators.tasks import load_sample_tasks, load_tasks  # noqa: E402

DEFAULT_TASKS = Path(__file__).resolve().parents[2] / "shared" / "colbench" / "backend_dev.jsonl"  # ../shared


class _CallTimeout(BaseException):
    pass


def _raise_timeout(signum: int, frame: object) -> None:
    raise _CallTimeout


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped descendants (sandbox servers and their jobs)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def score_in_process(tasks: list[Task]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, tasks fully passed) for unsandboxed exec of reference and answer."""
    signal.signal(signal.SIGALRM, _raise_timeout)
    successes = 0
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            cpu = cpu_seconds()
            started = time.perf_counter()
            for task in tasks:
                successes += _score_one_in_process(task)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds() - cpu
        finally:
            os.chdir(cwd)
    return elapsed, cpu, successes


def _score_one_in_process(task: Task) -> bool:
    reference: dict = {}
    answer: dict = {}
    try:
        exec(task.ground_truth, reference)
        exec(task.ground_truth, answer)  # the answer under test is the reference itself
    except Exception:
        return False
    passed = 0
    for call in task.test_cases.values():
        try:
            signal.setitimer(signal.ITIMER_REAL, PER_TEST_TIMEOUT_S)
            try:
                random.seed(0)
                expected = eval(call, reference)
                random.seed(0)
                got = eval(call, answer)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            passed += expected == got
        except BaseException:
            continue
    return passed == len(task.test_cases)


def score_sandboxed(tasks: list[Task], workers: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, tasks fully passed) for a fresh evaluator (cold reference cache).

    The servers are stopped inside the measurement, so their and their jobs' CPU time is counted.
    """
    pairs = [(task, task.ground_truth) for task in tasks]
    cpu = cpu_seconds()
    started = time.perf_counter()
    with BackendEvaluator(workers=workers) as evaluator:
        results = evaluator.evaluate_batch(pairs)
        elapsed = time.perf_counter() - started
    return elapsed, cpu_seconds() - cpu, sum(r.success for r in results)


def score_sandboxed_cached(tasks: list[Task], workers: int) -> tuple[float, int]:
    """(wall seconds, tasks fully passed) for scoring again once every reference is cached."""
    pairs = [(task, task.ground_truth) for task in tasks]
    with BackendEvaluator(workers=workers) as evaluator:
        evaluator.check(tasks)  # fills the reference cache
        started = time.perf_counter()
        results = evaluator.evaluate_batch(pairs)
        return time.perf_counter() - started, sum(r.success for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=Path, default=DEFAULT_TASKS, help="backend task JSONL")
    parser.add_argument("--workers", type=int, default=2, help="sandbox servers (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating repetitions (median reported)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N tasks")
    args = parser.parse_args()

    if args.tasks.is_file():
        tasks = load_tasks(args.tasks, kind="backend").items
    else:
        print(f"{args.tasks} not found: using the sample tasks in assets/tasks/")
        tasks = load_sample_tasks("backend")
    tasks = tasks[: args.limit] if args.limit else tasks
    print(f"{len(tasks)} tasks, {sum(len(t.test_cases) for t in tasks)} tests, {args.workers} sandbox workers, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")  # fmt: skip

    samples: dict[str, list[tuple[float, float | None]]] = {
        "in-process exec": [],
        "sandboxed": [],
        "cached": [],
    }
    for rep in range(args.repeat):
        seconds, cpu, in_process_ok = score_in_process(tasks)
        samples["in-process exec"].append((seconds, cpu))
        cold_s, cold_cpu, cold_ok = score_sandboxed(tasks, args.workers)
        samples["sandboxed"].append((cold_s, cold_cpu))
        warm_s, warm_ok = score_sandboxed_cached(tasks, args.workers)
        samples["cached"].append((warm_s, None))
        print(f"rep {rep + 1}: in-process {seconds:.2f} s, cpu {cpu:.2f} s ({in_process_ok} passed) | "
              f"sandboxed {cold_s:.2f} s, cpu {cold_cpu:.2f} s ({cold_ok} passed) | "
              f"reference cached {warm_s:.2f} s ({warm_ok} passed)")  # fmt: skip

    n = len(tasks)
    wall = {name: statistics.median(s for s, _ in runs) for name, runs in samples.items()}
    cpu = {
        name: statistics.median(c for _, c in runs)
        for name, runs in samples.items()
        if runs[0][1] is not None
    }
    print(
        f"\n{'mode':30} {'wall s':>7} {'tasks/s':>8} {'speed vs in-process':>20} {'CPU s':>7} {'CPU ms/task':>12}"
    )
    for name, label in (("in-process exec", "in-process exec"), ("sandboxed", "sandboxed"),
                        ("cached", "sandboxed, reference cached")):  # fmt: skip
        cpu_cells = f"{cpu[name]:7.2f} {cpu[name] / n * 1000:12.2f}" if name in cpu else f"{'-':>7} {'-':>12}"
        print(
            f"{label:30} {wall[name]:7.2f} {n / wall[name]:8.0f} {wall['in-process exec'] / wall[name]:19.2f}x {cpu_cells}"
        )
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
