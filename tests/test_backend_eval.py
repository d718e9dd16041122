"""ColBench backend evaluation: extraction, scoring, the reference cache, hostile answers, and the
self-check of our sample tasks and (when present) the real ColBench dev set. Real sandboxes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path

import pytest

from simulators import scoring
from simulators.backend_eval import BackendEvaluator, extract_code
from simulators.domain import ANSWER_MARKER, Episode, Task
from simulators.tasks import load_sample_tasks, load_tasks

REPO = Path(__file__).resolve().parents[1]
COLBENCH_DEV = REPO.parent / "shared" / "colbench" / "backend_dev.jsonl"
DOUBLE = "def double(x):\n    return 2 * x\n"


def double_task(task_id: str = "double") -> Task:
    return Task(
        id=task_id,
        kind="backend",
        problem_description="Double a number. The signature of the function is: def double(x)",
        ground_truth=DOUBLE,
        test_cases={f"test{i + 1}": f"double({i})" for i in range(10)},
    )


@pytest.fixture(scope="module", params=["auto", "audit"])
def evaluator(request):
    with BackendEvaluator(workers=2, per_test_timeout_s=0.5, load_timeout_s=2.0, mode=request.param) as ev:
        yield ev


@pytest.fixture(scope="module")
def namespaced():
    """The evaluator as the app runs it: strongest isolation available."""
    with BackendEvaluator(workers=2, per_test_timeout_s=0.5, load_timeout_s=2.0) as ev:
        yield ev


def failed(result) -> list[str]:
    return [t.name for t in result.tests if not t.passed]


# -- extract_code --------------------------------------------------------------------------------


def test_extract_code_takes_the_fenced_block_after_the_marker():
    message = (
        f"Sure.\n```python\ndef f(): return 0\n```\n{ANSWER_MARKER}\n```python\n{DOUBLE}```\nHope this helps!"
    )
    assert extract_code(message) == DOUBLE.strip()


def test_extract_code_prefers_the_largest_defining_block_and_ignores_usage_and_other_languages():
    helper = "def helper():\n    return 1"
    usage = "print(double(3))"
    message = (
        f"{ANSWER_MARKER} Here you go:\n```py\n{helper}\n```\n```python\n{DOUBLE}\n# doubles\n```\n"
        f"Usage:\n```python\n{usage}\n```\n```bash\npip install nothing\n```"
    )
    assert extract_code(message) == DOUBLE + "\n# doubles"


def test_extract_code_trims_chatter_around_raw_code():
    message = (
        f"{ANSWER_MARKER} I think this is it:\nimport math\n\n{DOUBLE}\nThis doubles the input, as asked."
    )
    assert extract_code(message) == f"import math\n\n{DOUBLE}".strip()


def test_extract_code_handles_unclosed_fences_indentation_and_code_before_the_marker():
    assert extract_code(f"{ANSWER_MARKER}\n```python\n{DOUBLE}") == DOUBLE.strip()
    indented = "\n".join("    " + line for line in DOUBLE.splitlines())
    assert extract_code(f"{ANSWER_MARKER}\n{indented}") == DOUBLE.strip()
    assert extract_code(f"```python\n{DOUBLE}```\n{ANSWER_MARKER} (the function above)") == DOUBLE.strip()


@pytest.mark.parametrize(
    "message", [None, "", "   ", f"{ANSWER_MARKER} I could not work it out.", "def broken(:"]
)
def test_extract_code_returns_none_without_code(message):
    assert extract_code(message) is None


# -- scoring ------------------------------------------------------------------------------------


def test_a_correct_answer_succeeds(evaluator):
    result = evaluator.evaluate(double_task(), f"{ANSWER_MARKER}\n```python\n{DOUBLE}```")
    assert result.success and result.tests_passed == 1.0
    assert [(t.expected, t.got) for t in result.tests[:3]] == [("0", "0"), ("2", "2"), ("4", "4")]
    scores = result.to_scores()
    assert set(scores) == {"tests_passed", "success", "tests", "sandbox"}
    assert scores["tests"][0] == {
        "name": "test1",
        "call": "double(0)",
        "expected": "0",
        "got": "0",
        "passed": True,
        "error": None,
    }


def test_an_answer_wrong_on_three_tests_scores_0_7(evaluator):
    answer = "def double(x):\n    return 0 if x in (1, 4, 7) else 2 * x"
    result = evaluator.evaluate(double_task(), answer)
    assert result.tests_passed == pytest.approx(0.7) and not result.success
    assert failed(result) == ["test2", "test5", "test8"]
    assert result.tests[1].expected == "2" and result.tests[1].got == "0" and result.tests[1].error is None


def test_an_answer_that_prints_is_still_scored(evaluator):
    answer = "print('loading' * 10_000)\ndef double(x):\n    print('doubling', x, flush=True)\n    return 2 * x\nprint(double(3))"
    assert evaluator.evaluate(double_task(), answer).tests_passed == 1.0


def test_values_compare_with_plain_equality_except_nan(evaluator):
    def task(reference: str) -> Task:
        return Task(
            id=f"cmp-{uuid.uuid4().hex}",
            kind="backend",
            problem_description="p",
            ground_truth=f"def f(x):\n    return {reference}",
            test_cases={"test1": "f(1)"},
        )

    def passes(reference: str, answer: str) -> bool:
        return evaluator.evaluate(task(reference), f"def f(x):\n    return {answer}").success

    assert passes("float('nan')", "float('nan')")
    assert passes("1", "1.0") and passes("[1, 2]", "[1, 2]") and passes("{'a': {1, 2}}", "{'a': {2, 1}}")
    assert not passes("0.3", "0.1 + 0.2")
    assert not passes("(1, 2)", "[1, 2]")
    assert not passes("float('nan')", "0")


def test_reference_results_are_cached_per_task(evaluator):
    task = double_task(f"cached-{uuid.uuid4().hex}")
    runs_before = evaluator.reference_runs
    first = evaluator.evaluate(task, DOUBLE)
    assert not first.reference_cached and evaluator.reference_runs == runs_before + 1
    second = evaluator.evaluate(task, "def double(x):\n    return x + x")
    assert second.reference_cached and second.success
    assert evaluator.reference_runs == runs_before + 1  # the reference did not run again
    best_of_n = evaluator.evaluate_batch([(task, DOUBLE)] * 4)
    assert all(r.reference_cached and r.success for r in best_of_n)
    assert evaluator.reference_runs == runs_before + 1


def test_a_changed_reference_is_not_served_from_the_cache(evaluator):
    task = double_task(f"changing-{uuid.uuid4().hex}")
    evaluator.evaluate(task, DOUBLE)
    task.ground_truth = "def double(x):\n    return 3 * x"
    assert evaluator.evaluate(task, DOUBLE).tests_passed == pytest.approx(0.1)  # only double(0) agrees


# -- hostile answers: each is a failed test, never a crash of the evaluator ----------------------

LISTENER_PORT = "{port}"  # filled in by the test below
HOSTILE_ON_3 = {
    "infinite loop": "while True:\n            pass",
    "uninterruptible C loop": "sum(range(10 ** 13))",
    "fork bomb": "while True:\n            os.fork()",
    "memory bomb": "hog = [bytearray(1 << 26) for _ in range(10 ** 6)]",
    "write outside scratch": f"open({str(REPO / 'collab-escape-backend')!r}, 'w').write('escaped')",
    "network": f"socket.create_connection(('127.0.0.1', {LISTENER_PORT}), timeout=1)",
    "kill the parent": "os.kill(os.getppid(), signal.SIGKILL)",
    "exit the process": "os._exit(0)",
    "raise SystemExit": "raise SystemExit(0)",
    "signal handler swallowing timeouts": "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n        while True:\n            pass",
}


@pytest.mark.parametrize("behaviour", list(HOSTILE_ON_3))
def test_a_hostile_call_fails_only_its_own_test(evaluator, behaviour):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        code = HOSTILE_ON_3[behaviour].replace(LISTENER_PORT, str(listener.getsockname()[1]))
        answer = (
            f"import os, signal, socket\ndef double(x):\n    if x == 3:\n        {code}\n    return 2 * x\n"
        )
        started = time.monotonic()
        result = evaluator.evaluate(double_task(), answer)
        listener.settimeout(0.1)
        with pytest.raises(TimeoutError):
            listener.accept()  # no connection ever arrived
    assert failed(result) == ["test4"], result.tests
    assert result.tests[3].error  # says why: timed out, killed, refused...
    assert not (REPO / "collab-escape-backend").exists()
    assert time.monotonic() - started < 30


def test_an_answer_cannot_cheat(evaluator):
    always_equal = "class Anything:\n    def __eq__(self, other):\n        return True\ndef double(x):\n    return Anything()"
    assert evaluator.evaluate(double_task(), always_equal).tests_passed == 0.0

    # Forge the reference's results (so they match its own) on the pipe both programs share.
    forged = "".join(
        json.dumps({"kind": "call", "program": "reference", "name": f"test{i + 1}", "value": 7}) + "\n"
        for i in range(10)
    )
    forger = f"import os\nos.write(3, {forged.encode()!r})\ndef double(x):\n    return 7"
    result = evaluator.evaluate(
        double_task(f"forged-{uuid.uuid4().hex}"), forger
    )  # reference runs in the same job
    assert not result.reference_cached and result.tests_passed == 0.0

    # Look for the reference's function among the live objects, and call it.
    snoop = (
        "import gc\ndef double(x):\n"
        "    found = [o for o in gc.get_objects() if getattr(o, '__name__', '') == 'double' and o is not double]\n"
        "    return found[0](x)"
    )
    result = evaluator.evaluate(double_task(f"snoop-{uuid.uuid4().hex}"), snoop)
    assert result.tests_passed == 0.0 and "gc.get_objects" in result.tests[0].error


def test_task_files_are_out_of_reach_of_answers(namespaced):
    reader = f"def double(x):\n    return len(open({str(COLBENCH_DEV)!r}).read()) * 0 + 2 * x"
    result = namespaced.evaluate(double_task(), reader)
    if namespaced.sandbox.isolation.filesystem_isolated:
        assert result.tests_passed == 0.0 and "FileNotFoundError" in result.tests[0].error
    else:  # the audit fallback guards writes only; the result says so
        assert "audit hook" in result.to_scores()["sandbox"]["isolation"]["filesystem"]


# -- episodes and self-checks --------------------------------------------------------------------


def test_score_episodes_sets_reward_and_scores_and_explains_missing_answers():
    task = double_task()
    answered = Episode(task=task, answer=f"{ANSWER_MARKER}\n```python\n{DOUBLE}```", scores={"rating": 4})
    unanswered = Episode(task=task, answer=None)
    chatty = Episode(task=task, answer="I am not sure how to do this.")
    scoring.score_episodes([answered, unanswered, chatty])
    assert answered.reward == 1.0 and answered.success and answered.scores["rating"] == 4
    assert answered.scores["sandbox"]["isolation"]["mode"] in ("namespaces", "audit")
    assert (
        unanswered.reward == 0.0 and unanswered.scores["error"] == "no answer" and unanswered.success is False
    )
    assert chatty.reward == 0.0 and chatty.scores["error"] == "no Python code found in the answer"
    assert len(unanswered.scores["tests"]) == 10


def test_check_reports_failing_and_nondeterministic_references(evaluator):
    def task(reference: str, calls: dict[str, str]) -> Task:
        return Task(
            id=uuid.uuid4().hex,
            kind="backend",
            problem_description="p",
            ground_truth=reference,
            test_cases=calls,
        )

    broken = task("def f(x):\n    return 10 // x", {"test1": "f(1)", "test2": "f(0)"})
    clock = task("import time\ndef f():\n    return time.perf_counter_ns()", {"test1": "f()"})
    seeded = task("import random\ndef f():\n    return random.random()", {"test1": "f()", "test2": "f()"})
    missing = task("import no_such_module\ndef f():\n    return 1", {"test1": "f()", "test2": "f()"})
    checks = evaluator.check([broken, clock, seeded, missing])
    assert checks[0].problems == [
        "test2: reference failed: ZeroDivisionError: integer division or modulo by zero"
    ]
    assert len(checks[1].problems) == 1 and "not deterministic" in checks[1].problems[0]
    assert checks[2].ok  # random is re-seeded before every call
    assert checks[3].problems == [
        "all tests: reference failed: reference failed to load: ModuleNotFoundError: No module named 'no_such_module'"
    ]


def test_sample_tasks_are_well_formed_and_pass_their_self_check():
    tasks = load_sample_tasks("backend")
    assert len(tasks) >= 20
    for task in tasks:
        assert re.fullmatch(r"sample-backend-\d\d", task.id)
        assert task.hidden_information == task.ground_truth and len(task.test_cases) == 10
        name = re.search(r"The signature of the function is: def (\w+)\(", task.problem_description).group(1)
        assert f"def {name}(" in task.ground_truth
    checks = scoring.check_tasks(tasks)
    assert [c.problems for c in checks if not c.ok] == []


def _colbench_or_samples(limit: int | None) -> list[Task]:
    """The real ColBench dev tasks when the shared copy exists here, else our samples."""
    if COLBENCH_DEV.is_file():
        return load_tasks(COLBENCH_DEV, kind="backend").items[:limit]
    return load_sample_tasks("backend")


def _unexplained_failures(tasks: list[Task], checks) -> list[tuple[str, list[str]]]:
    """Failed checks not explained by a module this environment lacks (e.g. bs4)."""
    unexplained = []
    for task, check in zip(tasks, checks):
        missing = {m for p in check.problems for m in re.findall(r"No module named '([\w.]+)'", p)}
        if not check.ok and not (missing and all(importlib.util.find_spec(m) is None for m in missing)):
            unexplained.append((task.id, check.problems))
    return unexplained


def test_colbench_subset_passes_its_self_check(namespaced):
    tasks = _colbench_or_samples(30)
    checks = namespaced.check(tasks)
    assert _unexplained_failures(tasks, checks) == []


@pytest.mark.slow
def test_full_colbench_self_check_within_a_minute():
    tasks = _colbench_or_samples(None)
    started = time.monotonic()
    with BackendEvaluator(workers=min(2, os.cpu_count() or 1)) as fresh:  # cold reference cache
        checks = fresh.check(tasks)
    elapsed = time.monotonic() - started
    assert _unexplained_failures(tasks, checks) == []
    assert elapsed < 60, f"{len(tasks)} tasks took {elapsed:.1f} s"
