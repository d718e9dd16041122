"""ColBench backend evaluation: run the agent's function against the reference on hidden tests.

As in the paper, a task's reward is the fraction of its (10) test calls on which the answer and
the reference return equal values, and the task is a success when all pass. Every call runs in
the sandbox (:mod:`simulators.sandbox`); unlike ColBench we do not reject answers that merely
contain ``print(`` or other blacklisted substrings: isolation comes from the sandbox, and
anything a program prints is discarded.

How one answer is evaluated:

* One sandbox request defines the reference (unless its results are cached) and then the
  answer, each in a job process of its own, and runs every test call on each under its own time
  budget; the request as a whole has a wall-clock and a no-progress budget. A call that hangs,
  raises, exhausts memory or kills the process is a failed test; when the process dies, the call
  in flight is charged and the remaining calls run in a fresh request.
* The reference's results leave its job before the answer's job starts, and the answer's job
  never holds them, nor the reference's source (see "Memory hygiene" in
  :mod:`simulators.sandbox`): there is nothing to patch and nothing to read, even for code that
  reads raw memory.
* Values are compared here, never in the job: the job sends plain data
  (:func:`simulators.sandbox.encode_value`), rebuilt here into builtin values compared with
  plain ``==`` as in ColBench, except that NaN equals NaN. An answer cannot win with an object
  whose ``__eq__`` always returns True.
* ``random`` (and numpy's global generator, when loaded) is re-seeded before every call and str
  hashing is fixed, so tasks that use randomness compare like-for-like.
* Reference results are cached per task (id + hash of the reference and the calls), so scoring
  many answers for one task (best-of-N) runs the reference once.
* Scoring a batch (``evaluate_batch``, ``check``, ``score_episodes``) first computes the
  references it does not have cached, many to a job (:meth:`BackendEvaluator._run_references`):
  references are task-file code, run sandboxed like any other, and share a job only with
  references of the same task file, each in a fresh namespace; a reference that crashes or
  hangs there costs only its own call, as above. Every answer then runs in a job of its own,
  as alone: no answer ever shares a process with a reference.

``scoring="colbench"`` scores by the reference implementation's rules instead (blacklist, its
code extraction, its exec scoping, its None rule), still in the sandbox, so that numbers can be
compared with the paper and HAL: see :mod:`simulators.scoring.colbench`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from simulators.domain import Episode, Task
from simulators.sandbox import (
    ERROR_CHARS,
    Isolation,
    Sandbox,
    SandboxLimits,
    SandboxRun,
    ValueTooLarge,
    decode_value,
)
from simulators.scoring import TaskCheck, check_scoring
from simulators.scoring.answers import extract_code
from simulators.scoring.colbench import (
    REFERENCE_MODULE,
    blacklisted,
    reference_answer,
    reference_code,
    reference_equal,
)

PER_TEST_TIMEOUT_S = 1.0  # ColBench calls take milliseconds; a second is generous even on a busy box
# (and with scoring="colbench" it is the answer's budget for exec + eval: the reference's alarm(1))
LOAD_TIMEOUT_S = 3.0  # defining a program (its imports and top-level code)
JOB_STARTUP_S = 2.0  # slack in a job's wall budget on top of its programs and calls
IDLE_GRACE_S = 1.0  # slack on the no-progress budget (message write, scheduling)
REFERENCE_CACHE_SIZE = 4096  # tasks whose reference results are kept
# References per batch job (at least one batch per worker). A job's start, first touches of the
# server's pages and exit cost as much as a few references; beyond ~100 little is left to save,
# and a crash only reruns the rest of its batch in a fresh job.
REFERENCE_BATCH_SIZE = 100
RANDOM_SEED = 0

_PROGRAMS = ("reference", "answer")  # run in this order within a job


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def values_equal(expected: Any, got: Any) -> bool:
    """ColBench's plain ``==`` on rebuilt values (where NaN == NaN); never raises."""
    try:
        return bool(expected == got)
    except Exception:  # e.g. RecursionError on absurd nesting: not equal
        return False


@dataclass
class TestOutcome:
    """One hidden test: the call, both results (as reprs) and the verdict."""

    __test__ = False  # not a pytest test class

    name: str
    call: str
    expected: str | None  # repr of the reference's return value
    got: str | None  # repr of the answer's return value
    passed: bool
    error: str | None = None  # why the test failed, when it is not a plain mismatch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackendResult:
    """The evaluation of one answer; ``to_scores()`` is what goes into ``Episode.scores``."""

    task_id: str
    tests: list[TestOutcome]
    error: str | None = None  # the answer as a whole could not be scored (no answer, no code)
    reference_cached: bool = False
    sandbox_runs: int = 0
    isolation: Isolation | None = None  # what the sandbox could enforce on this host
    scoring: str = "ours"  # whose rules produced the verdicts: "ours" or "colbench"

    @property
    def tests_passed(self) -> float:
        return sum(t.passed for t in self.tests) / len(self.tests) if self.tests else 0.0

    @property
    def success(self) -> bool:
        return bool(self.tests) and all(t.passed for t in self.tests)

    def to_scores(self) -> dict[str, Any]:
        scores: dict[str, Any] = {
            "tests_passed": self.tests_passed,
            "success": self.success,
            "scoring": self.scoring,
            "tests": [t.to_dict() for t in self.tests],
            "sandbox": {
                "reference_cached": self.reference_cached,
                "runs": self.sandbox_runs,
                "isolation": self.isolation.to_dict() if self.isolation else {},
            },
        }
        if self.error is not None:
            scores["error"] = self.error
        return scores


@dataclass
class _Observed:
    """What one program returned for one call."""

    value: Any = None
    repr: str | None = None
    error: str | None = None
    transient: bool = False  # a timeout or a crash: not cached, it may pass on a calmer machine
    self_equal: bool = True  # colbench: ``bool(value == value)`` held in the job (False: NaN, arrays)


@dataclass
class _NotRun:
    """An answer with nothing to run, and why."""

    reason: str


@dataclass
class _Evaluation:
    outcomes: dict[str, dict[str, _Observed]]  # program -> call name -> what it returned
    reference_cached: bool
    runs: int


# --------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------


def default_workers() -> int:
    """Sandbox servers to run: ``COLLAB_EVAL_WORKERS``, else one per core up to 4."""
    configured = os.environ.get("COLLAB_EVAL_WORKERS", "").strip()
    return int(configured) if configured else max(1, min(4, os.cpu_count() or 1))


class BackendEvaluator:
    """Scores answers to backend tasks in a pool of sandbox servers, caching reference results.

    Thread-safe; ``evaluate_batch`` and ``check`` compute the references they lack in batches,
    then run ``workers`` evaluations at once. ``reference_runs`` counts the sandbox requests that
    ran references (cache misses: one per task evaluated alone, one per batch of references).
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        per_test_timeout_s: float = PER_TEST_TIMEOUT_S,
        load_timeout_s: float = LOAD_TIMEOUT_S,
        limits: SandboxLimits | None = None,
        mode: str = "auto",
        cache_size: int = REFERENCE_CACHE_SIZE,
    ) -> None:
        self.workers = workers or default_workers()
        self.per_test_timeout_s = per_test_timeout_s
        self.load_timeout_s = load_timeout_s
        self.sandbox = Sandbox(workers=self.workers, limits=limits, mode=mode)
        self.reference_runs = 0
        self._cache: OrderedDict[str, dict[str, _Observed]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def evaluate(self, task: Task, answer_text: str | None, scoring: str = "ours") -> BackendResult:
        """Score the agent's final message (or the answer extracted from it) for one task, by our
        rules or (``scoring="colbench"``) the reference implementation's."""
        check_scoring(scoring)
        code = self._code(task, answer_text, scoring)
        if isinstance(code, _NotRun):
            return self._unscored(task, code.reason, scoring, self._reference_outcomes(task, scoring))
        return self._result(task, self._evaluate_code(task, code, scoring), scoring)

    def evaluate_batch(
        self, items: Iterable[tuple[Task, str | None]], scoring: str = "ours"
    ) -> list[BackendResult]:
        """``evaluate`` over (task, answer) pairs, results in input order: first the references
        not cached, in batches, then the answers, ``workers`` at a time."""
        check_scoring(scoring)
        coded = [(task, self._code(task, answer_text, scoring)) for task, answer_text in items]
        fresh = self._compute_references([task for task, _ in coded], scoring)

        def score(item: tuple[Task, str | _NotRun]) -> BackendResult:
            task, code = item
            if isinstance(code, _NotRun):
                reference = fresh.get(_reference_key(task, scoring))  # (or cached before this batch)
                if reference is None:
                    reference = self._reference_outcomes(task, scoring)
                return self._unscored(task, code.reason, scoring, reference)
            return self._result(task, self._evaluate_code(task, code, scoring, fresh), scoring)

        return self._map(score, coded)

    def check(self, tasks: Sequence[Task], scoring: str = "ours") -> list[TaskCheck]:
        """Run each reference against itself. Ours: every call must return a value, twice the
        same. ColBench's: the reference, submitted as the answer, must pass all its tests."""
        check_scoring(scoring)
        tasks = list(tasks)
        if scoring == "colbench":
            results = self.evaluate_batch([(task, task.ground_truth) for task in tasks], scoring)
            return [_check_by_reference_rules(task, result) for task, result in zip(tasks, results)]
        fresh = self._compute_references(tasks, scoring)
        return self._map(lambda task: self._check_one(task, fresh), tasks)

    def close(self) -> None:
        self.sandbox.close()

    def __enter__(self) -> BackendEvaluator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _map(self, function: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if len(items) <= 1 or self.workers == 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="backend-eval") as pool:
            return list(pool.map(function, items))

    def _unscored(
        self, task: Task, reason: str, scoring: str, reference: dict[str, _Observed]
    ) -> BackendResult:
        """Every test failed for ``reason``, beside what the reference returns for it (so that a
        person sees what the answer should have given)."""
        tests = [TestOutcome(name, call, reference[name].repr if name in reference else None, None, False, reason)
                 for name, call in task.test_cases.items()]
        return BackendResult(task_id=task.id, tests=tests, error=reason, isolation=self.sandbox.isolation,
                             scoring=scoring)

    def _reference_outcomes(self, task: Task, scoring: str) -> dict[str, _Observed]:
        """The reference's outcomes for ``task``: cached, or run now (and cached)."""
        key = _reference_key(task, scoring)
        with self._reference_lock(key):
            reference = self._cached(key)
            if reference is None:
                reference = self._run_references([task], scoring)[0]
                self._store_unless_transient(key, reference)
            return reference

    def _code(self, task: Task, answer_text: str | None, scoring: str) -> str | _NotRun:
        """The code to run for an answer, or why there is none."""
        if task.kind != "backend":
            raise ValueError(f"task {task.id} is a {task.kind} task, not a backend task")
        if answer_text is None or not answer_text.strip():
            return _NotRun("no answer")
        if scoring == "colbench":
            word = blacklisted(answer_text)
            if word is not None:
                return _NotRun(f"the answer contains {word!r}, which ColBench's scorer refuses")
            return reference_code(answer_text)
        code = extract_code(answer_text)
        if code is None:
            return _NotRun("no Python code found in the answer")
        return code

    def _check_one(self, task: Task, fresh: dict[str, dict[str, _Observed]]) -> TaskCheck:
        outcomes = self._evaluate_code(task, task.ground_truth, "ours", fresh).outcomes
        by_problem: dict[str, list[str]] = {}
        for name in task.test_cases:
            first, second = outcomes["reference"][name], outcomes["answer"][name]
            if first.error is not None:
                problem = f"reference failed: {first.error}"
            elif second.error is not None:
                problem = f"second run failed: {second.error}"
            elif not values_equal(first.value, second.value):
                problem = f"not deterministic: {first.repr} then {second.repr}"
            else:
                continue
            by_problem.setdefault(problem, []).append(name)
        return _task_check(task, by_problem)

    def _result(self, task: Task, evaluation: _Evaluation, scoring: str) -> BackendResult:
        verdict = _reference_verdict if scoring == "colbench" else _our_verdict
        tests = []
        for name, call in task.test_cases.items():
            expected, got = evaluation.outcomes["reference"][name], evaluation.outcomes["answer"][name]
            passed, error = verdict(expected, got)
            tests.append(TestOutcome(name, call, expected.repr, got.repr, passed, error))
        return BackendResult(
            task_id=task.id,
            tests=tests,
            reference_cached=evaluation.reference_cached,
            sandbox_runs=evaluation.runs,
            isolation=self.sandbox.isolation,
            scoring=scoring,
        )

    def _evaluate_code(
        self, task: Task, code: str, scoring: str, fresh: dict[str, dict[str, _Observed]] | None = None
    ) -> _Evaluation:
        """Run ``code`` as the answer; the reference's outcomes come from ``fresh`` (computed for
        this batch, transient failures included), the cache, or a job run alongside."""
        key = _reference_key(task, scoring)
        if fresh and key in fresh:
            return self._run(task, code, fresh[key], scoring, reference_cached=False)
        cached = self._cached(key)
        if cached is not None:
            return self._run(task, code, cached, scoring)
        with self._reference_lock(key):  # the first evaluation of a task runs its reference once
            cached = self._cached(key)
            if cached is not None:
                return self._run(task, code, cached, scoring)
            evaluation = self._run(task, code, None, scoring)
            self._store_unless_transient(key, evaluation.outcomes["reference"])
            return evaluation

    def _run(
        self,
        task: Task,
        code: str,
        known_reference: dict[str, _Observed] | None,
        scoring: str,
        *,
        reference_cached: bool = True,
    ) -> _Evaluation:
        """Run jobs until every call of both programs has an outcome; a crash charges one call."""
        sources = {"reference": task.ground_truth, "answer": code}
        outcomes: dict[str, dict[str, _Observed]] = {"reference": dict(known_reference or {}), "answer": {}}
        runs = 0
        while True:
            todo = {p: [n for n in task.test_cases if n not in outcomes[p]] for p in _PROGRAMS}
            programs = [
                self._program(p, sources[p], {n: task.test_cases[n] for n in todo[p]}, scoring)
                for p in _PROGRAMS
                if todo[p]
            ]
            if not programs:
                return _Evaluation(outcomes, known_reference is not None and reference_cached, runs)
            run = self._run_programs(programs, scoring)
            runs += 1
            if todo["reference"]:
                with self._lock:
                    self.reference_runs += 1
            loaded = _collect(run, todo, outcomes)
            _charge_call_in_flight(run, loaded, todo, outcomes)

    def _compute_references(self, tasks: Sequence[Task], scoring: str) -> dict[str, dict[str, _Observed]]:
        """The reference outcomes of the tasks not cached, by reference key, computed in batches
        (``workers`` at a time) and cached unless transient. Batches hold up to
        ``REFERENCE_BATCH_SIZE`` references of one task file: a task file's code never shares a
        process with another file's, and no answer shares one with any reference."""
        pending: dict[str, Task] = {}
        for task in tasks:
            key = _reference_key(task, scoring)
            if key not in pending and self._cached(key) is None:
                pending[key] = task
        by_file: dict[str, list[str]] = {}
        for key, task in pending.items():
            by_file.setdefault(task.source.rpartition(":")[0], []).append(key)
        batches = []
        for keys in by_file.values():
            count = max(min(self.workers, len(keys)), -(-len(keys) // REFERENCE_BATCH_SIZE))
            batches += [keys[i * len(keys) // count : (i + 1) * len(keys) // count] for i in range(count)]
        computed = self._map(lambda keys: self._run_references([pending[k] for k in keys], scoring), batches)
        fresh: dict[str, dict[str, _Observed]] = {}
        for keys, references in zip(batches, computed):
            for key, reference in zip(keys, references):
                fresh[key] = reference
                self._store_unless_transient(key, reference)
        return fresh

    def _run_references(self, tasks: Sequence[Task], scoring: str) -> list[dict[str, _Observed]]:
        """Every call's outcome for the references of ``tasks``, all in one job (``same_job``),
        each in a fresh namespace. When the job dies, the call in flight is charged (as in
        :meth:`_run`) and the remaining calls, of that reference and the others, run in a fresh
        job."""
        names = [f"reference#{index}" for index in range(len(tasks))]
        outcomes: dict[str, dict[str, _Observed]] = {name: {} for name in names}
        while True:
            todo = {name: [n for n in t.test_cases if n not in outcomes[name]] for name, t in zip(names, tasks)}
            programs = [
                self._program(name, task.ground_truth, {n: task.test_cases[n] for n in todo[name]}, scoring)
                for name, task in zip(names, tasks)
                if todo[name]
            ]
            if not programs:
                return [outcomes[name] for name in names]
            run = self._run_programs(programs, scoring, same_job=True)
            with self._lock:
                self.reference_runs += 1
            loaded = _collect(run, todo, outcomes)
            _charge_call_in_flight(run, loaded, todo, outcomes)

    def _program(self, name: str, source: str, calls: dict[str, str], scoring: str) -> dict[str, Any]:
        program: dict[str, Any] = {"name": name, "source": source, "calls": calls}
        if scoring == "colbench":  # exec again for every call, with the reference's scoping
            budget = self._call_budget(name, scoring)
            program["reexec"] = {"module_name": REFERENCE_MODULE, "call_timeout_s": budget}
        return program

    def _run_programs(
        self, programs: list[dict[str, Any]], scoring: str, *, same_job: bool = False
    ) -> SandboxRun:
        budgets = [self._call_budget(program["name"], scoring) for program in programs]
        return self.sandbox.run(
            "run_calls",
            {
                "programs": programs,
                "load_timeout_s": self.load_timeout_s,
                "call_timeout_s": self.per_test_timeout_s,
                "seed": RANDOM_SEED,
                "same_job": same_job,
            },
            wall_s=JOB_STARTUP_S
            + sum(self.load_timeout_s + budget * len(p["calls"]) for p, budget in zip(programs, budgets)),
            idle_s=max(self.load_timeout_s, *budgets) + IDLE_GRACE_S,
        )

    def _call_budget(self, program: str, scoring: str) -> float:
        """Seconds per call. ColBench's scorer gives the answer's exec + eval its one-second alarm
        and the reference no limit at all: here the reference gets a definition's budget on top."""
        if scoring == "colbench" and _role(program) == "reference":
            return self.load_timeout_s + self.per_test_timeout_s
        return self.per_test_timeout_s

    def _cached(self, key: str) -> dict[str, _Observed] | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
            return entry

    def _store_unless_transient(self, key: str, reference: dict[str, _Observed]) -> None:
        """Cache a reference's outcomes, unless a timeout or crash may have changed one."""
        if any(observed.transient for observed in reference.values()):
            return
        with self._lock:
            self._cache[key] = reference
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    @contextmanager
    def _reference_lock(self, key: str) -> Iterator[None]:
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            yield
            with self._lock:
                self._key_locks.pop(key, None)  # later callers find the cache (or retry afresh)


def _reference_key(task: Task, scoring: str) -> str:
    content = json.dumps([task.ground_truth, sorted(task.test_cases.items())], ensure_ascii=False)
    return f"{scoring}:{task.id}:{hashlib.sha256(content.encode()).hexdigest()[:24]}"


def _our_verdict(expected: _Observed, got: _Observed) -> tuple[bool, str | None]:
    if expected.error is not None:
        return False, f"reference failed: {expected.error}"
    if got.error is not None:
        return False, got.error
    return values_equal(expected.value, got.value), None


def _reference_verdict(expected: _Observed, got: _Observed) -> tuple[bool, str | None]:
    """ColBench's rule: passed when the reference's output is not None and ``==`` the answer's
    (an exception in either program makes its output None)."""
    if expected.error is not None:
        return False, f"reference returned None ({expected.error})"
    if expected.value is None:
        return False, "reference returned None"
    if got.error is not None:
        return False, got.error
    if not (expected.self_equal and got.self_equal):
        return False, "== on these values is not True even for a value and itself (NaN, NumPy arrays)"
    return reference_equal(expected.value, got.value), None


def _check_by_reference_rules(task: Task, result: BackendResult) -> TaskCheck:
    by_problem: dict[str, list[str]] = {}
    for test in result.tests:
        if not test.passed:
            problem = test.error or f"not equal: {test.expected} then {test.got}"
            by_problem.setdefault(problem, []).append(test.name)
    return _task_check(task, by_problem)


def _task_check(task: Task, by_problem: dict[str, list[str]]) -> TaskCheck:
    everything = len(task.test_cases) > 1
    problems = [
        f"{'all tests' if everything and len(names) == len(task.test_cases) else ', '.join(names)}: {problem}"
        for problem, names in by_problem.items()
    ]
    return TaskCheck(task_id=task.id, source=task.source, ok=not problems, problems=problems)


def _collect(
    run: SandboxRun, todo: dict[str, list[str]], outcomes: dict[str, dict[str, _Observed]]
) -> dict[str, bool]:
    """Record the outcomes a job reported; returns which programs got defined. ``todo`` lists
    each program's calls, programs in the order they ran.

    The messages are untrusted: anything malformed is ignored, the first outcome per call wins,
    and once a later program has spoken, an earlier one may not any more (a later program could
    try to forge an earlier one's results, even from a process of its own: they share the
    result pipe's order).
    """
    expected = {program: set(names) for program, names in todo.items()}
    order = [p for p in todo if expected[p]]
    loaded = dict.fromkeys(todo, False)
    current = 0  # index in ``order`` of the program allowed to speak
    for message in run.messages:
        if not isinstance(message, dict) or message.get("program") not in order:
            continue
        program = message["program"]
        position = order.index(program)
        if position < current:
            continue
        current = position
        kind = message.get("kind")
        if kind == "loaded" and not loaded[program]:
            loaded[program] = True
            if message.get("error") is not None:
                failure = _Observed(error=f"{_role(program)} failed to load: {_text(message['error'])}")
                for name in expected[program]:
                    outcomes[program].setdefault(name, failure)
        elif kind == "call" and loaded[program] and message.get("name") in expected[program]:
            outcomes[program].setdefault(message["name"], _observed(message))
        elif kind == "done":
            current = position + 1
    return loaded


def _charge_call_in_flight(
    run: SandboxRun,
    loaded: dict[str, bool],
    todo: dict[str, list[str]],
    outcomes: dict[str, dict[str, _Observed]],
) -> None:
    """When a job ended early, blame the call (or program definition) it was busy with."""
    for program in todo:
        missing = [name for name in todo[program] if name not in outcomes[program]]
        if not missing:
            continue
        why = run.describe()
        if not loaded[program]:  # died while defining the program: none of its calls can run
            for name in missing:
                outcomes[program][name] = _Observed(
                    error=f"{_role(program)} crashed while loading: {why}", transient=True
                )
        else:
            outcomes[program][missing[0]] = _Observed(error=why, transient=True)
        return


def _role(program: str) -> str:
    """What a program is, "reference" or "answer" (a batch names its references "reference#<index>")."""
    return program.partition("#")[0]


def _observed(message: dict[str, Any]) -> _Observed:
    if message.get("error") is not None:
        return _Observed(error=_text(message["error"]), transient=message.get("timed_out") is True)
    if "value" not in message:
        return _Observed(error="the sandbox sent a result without a value")
    try:
        value = decode_value(message["value"])
    except ValueTooLarge as exc:  # built to make the evaluator slow, or just too big to compare
        return _Observed(error=f"the returned value was refused: {exc}")
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError, RecursionError):
        return _Observed(error="the sandbox sent a malformed value")
    return _Observed(value=value, repr=_text(message.get("repr")), self_equal=message.get("self_equal") is not False)


def _text(value: Any) -> str:
    return value[:ERROR_CHARS] if isinstance(value, str) else "?"


# --------------------------------------------------------------------------------------------
# Module-level API (what simulators.scoring dispatches to)
# --------------------------------------------------------------------------------------------

_default_evaluator: BackendEvaluator | None = None
_default_lock = threading.Lock()


def default_evaluator() -> BackendEvaluator:
    """The process-wide evaluator (its servers start on first use and stop at exit)."""
    global _default_evaluator
    with _default_lock:
        if _default_evaluator is None:
            _default_evaluator = BackendEvaluator()
        return _default_evaluator


def evaluate_backend(task: Task, answer_text: str | None, scoring: str = "ours") -> BackendResult:
    return default_evaluator().evaluate(task, answer_text, scoring)


def evaluate_backend_batch(items: Iterable[tuple[Task, str | None]], scoring: str = "ours") -> list[BackendResult]:
    return default_evaluator().evaluate_batch(items, scoring)


def check_tasks(tasks: Sequence[Task], scoring: str = "ours") -> list[TaskCheck]:
    return default_evaluator().check(tasks, scoring)


def score_episodes(episodes: Sequence[Episode], scoring: str = "ours") -> None:
    """Set ``reward`` (fraction of tests passed) and ``scores`` of backend episodes in place.

    ``scores["scoring"]`` names the scorer behind ``reward``, ``tests_passed`` and ``success``;
    ``scores["by_scorer"]`` keeps each scorer's ``tests_passed`` and ``success``, so an episode
    scored both ways reports both. ColBench's scorer reads the answer as its environment cut it.
    """
    answer_of = reference_answer if scoring == "colbench" else (lambda episode: episode.answer)
    results = evaluate_backend_batch(((episode.task, answer_of(episode)) for episode in episodes), scoring)
    for episode, result in zip(episodes, results):
        by_scorer = dict(episode.scores.get("by_scorer") or {})
        if not by_scorer and "tests_passed" in episode.scores:  # scored before scorers were recorded
            by_scorer[episode.scores.get("scoring", "ours")] = {
                "tests_passed": episode.scores["tests_passed"], "success": episode.scores.get("success")}
        by_scorer[scoring] = {"tests_passed": result.tests_passed, "success": result.success}
        episode.reward = result.tests_passed
        episode.scores.pop("error", None)  # another scorer's
        episode.scores.update(result.to_scores())
        episode.scores["by_scorer"] = by_scorer
