"""ColBench backend evaluation: extraction, scoring, the reference cache, hostile answers, and the
self-check of our sample tasks and (when present) the real ColBench dev set. Real sandboxes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from simulators import scoring
from simulators.domain import ANSWER_MARKER, Episode, Task
from simulators.scoring.answers import extract_code
from simulators.scoring.backend import BackendEvaluator
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


def test_a_code_block_cut_at_the_token_limit_is_scored_and_fails_with_its_syntax_error(evaluator):
    cut = f"{ANSWER_MARKER}\n```python\nimport math\ndef double(x):\n    return sum(2 * y for y in [x] if y >"
    assert extract_code(cut) == "import math\ndef double(x):\n    return sum(2 * y for y in [x] if y >"
    result = evaluator.evaluate(double_task(), cut)
    assert result.error is None and result.tests_passed == 0.0
    assert all(t.error.startswith("answer failed to load: SyntaxError") for t in result.tests), result.tests
    assert [t.expected for t in result.tests] == [repr(2 * i) for i in range(10)]


@pytest.mark.parametrize("answer", [None, "I am not sure how to do this."])
@pytest.mark.parametrize("how", ["alone", "in a batch"])
def test_an_answer_with_nothing_to_run_still_shows_what_the_reference_returns(evaluator, answer, how):
    task = double_task(uuid.uuid4().hex)  # not cached: the reference runs for it
    if how == "alone":
        result = evaluator.evaluate(task, answer)
    else:
        result = evaluator.evaluate_batch([(task, answer), (task, DOUBLE)])[0]
    assert result.error in ("no answer", "no Python code found in the answer") and result.tests_passed == 0.0
    assert [t.expected for t in result.tests] == [repr(2 * i) for i in range(10)]
    assert all(t.got is None and t.error == result.error for t in result.tests)


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
    assert set(scores) == {"tests_passed", "success", "scoring", "tests", "sandbox"}
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
EVALUATOR_PID = "{evaluator}"
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
    # Values that would fool a comparison made with the answer's own methods (none is made).
    "__eq__ always True": "class Anything:\n            def __eq__(self, other):\n                return True\n        return Anything()",
    "__eq__ never returns": "class Stuck:\n            def __eq__(self, other):\n                while True:\n                    pass\n        return Stuck()",
    "__repr__ never returns": "class Mute:\n            def __repr__(self):\n                while True:\n                    pass\n        return Mute()",
    # libc through ctypes, past any audit hook: each passes its test only if the escape works.
    "ctypes: create a host file": f"import ctypes\n        assert ctypes.CDLL(None).open({str(REPO / 'collab-escape-backend').encode()!r}, 0o101, 0o644) >= 0",
    "ctypes: signal the evaluator": f"import ctypes\n        assert ctypes.CDLL(None).kill({EVALUATOR_PID}, 0) == 0",
    "ctypes: leave the chroot": "import ctypes\n        assert ctypes.CDLL(None).chroot(b'/usr') == 0",
    "ctypes: a user namespace of its own": "import ctypes\n        assert ctypes.CDLL(None).unshare(0x10000000) == 0",
}


@pytest.mark.parametrize("behaviour", list(HOSTILE_ON_3))
def test_a_hostile_call_fails_only_its_own_test(evaluator, behaviour):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        code = HOSTILE_ON_3[behaviour].replace(LISTENER_PORT, str(listener.getsockname()[1]))
        code = code.replace(EVALUATOR_PID, str(os.getpid()))
        answer = (
            f"import os, signal, socket\ndef double(x):\n    if x == 3:\n        {code}\n    return 2 * x\n"
        )
        started = time.monotonic()
        result = evaluator.evaluate(double_task(), answer)
        listener.settimeout(0.1)
        with pytest.raises(TimeoutError):
            listener.accept()  # no connection ever arrived
    assert failed(result) == ["test4"], result.tests
    # Says why: timed out, killed, refused... or it returned an object that is no 6.
    assert result.tests[3].error or result.tests[3].got.startswith("<solution.double.<locals>.")
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
    )  # the reference runs in the same request, just before
    assert not result.reference_cached and result.tests_passed == 0.0

    # Look for the reference's function among the live objects, and call it.
    snoop = (
        "import gc\ndef double(x):\n"
        "    found = [o for o in gc.get_objects() if getattr(o, '__name__', '') == 'double' and o is not double]\n"
        "    return found[0](x)"
    )
    result = evaluator.evaluate(double_task(f"snoop-{uuid.uuid4().hex}"), snoop)
    assert result.tests_passed == 0.0 and "IndexError" in result.tests[0].error  # not in its process


def test_task_files_are_out_of_reach_of_answers(evaluator):
    reader = f"def double(x):\n    return len(open({str(COLBENCH_DEV)!r}).read()) * 0 + 2 * x"
    result = evaluator.evaluate(double_task(), reader)
    assert result.tests_passed == 0.0
    if evaluator.sandbox.isolation.filesystem_isolated:  # not even there
        assert "FileNotFoundError" in result.tests[0].error
    else:  # refused by the audit hook (best effort); the result says so
        assert "PermissionError" in result.tests[0].error
        assert "audit hook" in result.to_scores()["sandbox"]["isolation"]["filesystem"]


def test_every_result_carries_the_isolation_and_any_warning(evaluator):
    isolation = evaluator.evaluate(double_task(), DOUBLE).to_scores()["sandbox"]["isolation"]
    assert isolation["mode"] == evaluator.sandbox.isolation.mode
    if isolation["mode"] == "audit":
        assert "NOT kernel-isolated" in isolation["warning"] and "user namespaces" in isolation["warning"]
    else:
        assert isolation["warning"] == ""


POISONER = """
import builtins, os, random, sys, time
builtins.sorted = lambda *args, **kwargs: [42]
random.seed = lambda *args, **kwargs: None
random.random = lambda: 0.5
sys.modules["math"] = None
os.environ["PYTHONPATH"] = os.getcwd()
for name in ("math.py", "json.py", "random.py", "sitecustomize.py", "usercustomize.py"):
    for directory in (os.getcwd(), os.environ["HOME"], "/tmp"):
        try:
            with open(os.path.join(directory, name), "w") as fh:
                fh.write("raise SystemExit('poisoned')")
        except OSError:
            pass
try:
    if os.fork() == 0:  # a lingering child that would forge the next job's results
        time.sleep(2)
        os.write(3, b'{"kind": "call", "program": "reference", "name": "test1", "value": 0}\\n')
        os._exit(0)
except OSError:
    pass
def double(x):
    return 2 * x
"""
NEXT_REFERENCE = (
    "import json, math, random\n"
    "def stats(xs):\n"
    "    return [sorted(xs), math.floor(2.5), random.random(), json.dumps(xs), len(xs)]\n"
)


def test_a_hostile_answer_cannot_poison_the_next_evaluation(evaluator):
    mode = evaluator.sandbox.mode
    with BackendEvaluator(workers=1, per_test_timeout_s=0.5, load_timeout_s=2.0, mode=mode) as one:
        for _ in range(2):  # one server runs everything, twice over
            assert one.evaluate(double_task(f"poison-{uuid.uuid4().hex}"), POISONER).tests  # scored
            task = Task(
                id=f"next-{uuid.uuid4().hex}",
                kind="backend",
                problem_description="p",
                ground_truth=NEXT_REFERENCE,
                test_cases={"test1": "stats([3, 1, 2])", "test2": "stats([])"},
            )
            result = one.evaluate(task, NEXT_REFERENCE)
            assert result.success, result.tests
            # The reference itself ran unpoisoned: real sorted, math, json and random (seed 0).
            assert result.tests[0].expected == repr([[1, 2, 3], 2, 0.8444218515250481, "[3, 1, 2]", 3])
            assert not one.evaluate(task, NEXT_REFERENCE.replace("sorted(xs)", "xs")).success


# An answer that hunts for the expected outputs: in raw memory (numpy's array interface, no
# ctypes), in files, in the environment, among live objects and up the stack. Finding one, it
# returns it (and passes); else it reports where it looked. The canary, a value of its own made
# at run time, proves that its memory scan does read memory.
HUNTER = r"""
import gc, os, re, sys, time

CANARY = "CANARY-" + os.urandom(8).hex()
FOUND = set()
LOOKED = {"pages": 0, "files": {}}
PATTERN = re.compile(rb"(?:SECRET|CANARY)-[0-9a-f]{16}")
SECRET = "SECRET" + "-"


def found_in(data):
    FOUND.update(match.decode() for match in PATTERN.findall(data))


def scan_memory():
    import numpy

    class Page:
        def __init__(self, address):
            self.__array_interface__ = {"data": (address, True), "shape": (4096,), "typestr": "|u1", "version": 3}

    r, w = os.pipe()  # a write from an unmapped page fails (EFAULT) instead of crashing
    anchors = {id(o) & ~0xFFF for o in (Page, os, numpy, CANARY, FOUND, gc, [0] * 100, 1.5)}
    seen, deadline = set(), time.monotonic() + 0.8
    for radius in range(0, 64 << 20, 4096):
        for page in {a + d for a in anchors for d in (-radius, radius)} - seen:
            seen.add(page)
            try:
                count = os.write(w, memoryview(numpy.asarray(Page(page))))
            except (OSError, ValueError):
                continue
            LOOKED["pages"] += 1
            found_in(os.read(r, count))
        if time.monotonic() > deadline:
            return


def scan_files():
    for path in PATHS + ["/proc/self/environ", "/proc/self/cmdline", "/proc/1/environ"]:
        try:
            with open(path, "rb") as fh:
                found_in(fh.read())
            LOOKED["files"][path] = "read"
        except OSError as exc:
            LOOKED["files"][path] = type(exc).__name__
    found_in(repr(dict(os.environ)).encode())


def scan_objects():
    frame = sys._getframe()
    while frame is not None:
        found_in(repr(frame.f_locals)[:1_000_000].encode())
        frame = frame.f_back
    for obj in gc.get_objects():
        if isinstance(obj, str) and SECRET in obj:
            found_in(obj.encode())


scan_memory()
scan_files()


def f(x):
    scan_objects()
    secrets = sorted(s for s in FOUND if s.startswith(SECRET))
    if secrets:
        return secrets[0] + str(x)
    return {"canary seen": CANARY in FOUND, "pages read": LOOKED["pages"] > 0, "files": LOOKED["files"]}
"""


@pytest.mark.parametrize("how", ["alone", "in a batch"])
def test_an_answer_cannot_read_the_reference_or_its_results_from_anywhere(evaluator, how):
    pytest.importorskip("numpy")  # the hunter's raw-memory reader needs it
    secret = "SECRET-" + uuid.uuid4().hex[:16]

    def secret_task() -> Task:
        return Task(
            id=f"secret-{uuid.uuid4().hex}",
            kind="backend",
            problem_description="p",
            ground_truth=f"def f(x):\n    return {secret!r} + str(x)\n",
            test_cases={f"test{i + 1}": f"f({i})" for i in range(3)},
        )

    # The expected outputs also lie on disk, readable by anyone, as in a task file.
    on_disk = Path(tempfile.mkdtemp(prefix="collab-expected-")) / "expected.json"
    on_disk.parent.chmod(0o755)
    on_disk.write_text(json.dumps({"test1": secret + "0"}))
    hunter = HUNTER.replace("PATHS + ", f"{[str(on_disk), str(COLBENCH_DEV)]!r} + ")
    mode = evaluator.sandbox.mode
    try:
        with BackendEvaluator(workers=1, per_test_timeout_s=1.0, load_timeout_s=3.0, mode=mode) as one:
            known = secret_task()
            assert one.evaluate(known, known.ground_truth).success  # its results went through this server
            if how == "alone":
                results = {
                    "scored against the cached reference": one.evaluate(known, hunter),
                    "right after its reference ran": one.evaluate(secret_task(), hunter),
                }
            else:  # the batch's references all ran in one job just before, on this same server
                runs_before = one.reference_runs
                scored = one.evaluate_batch([(known, hunter)] + [(secret_task(), hunter) for _ in range(3)])
                assert one.reference_runs == runs_before + 1  # three references, one job
                results = {f"batch item {i}": result for i, result in enumerate(scored)}
    finally:
        shutil.rmtree(on_disk.parent)
    for when, result in results.items():
        report = result.tests[0].got or ""
        assert result.tests_passed == 0.0 and secret not in report, (when, result.tests)
        assert "'canary seen': True" in report and "'pages read': True" in report, (when, result.tests)
        assert f"{str(on_disk)!r}: 'read'" not in report, (when, report)


# -- references computed in batches --------------------------------------------------------------

# A reference that changes what the next reference in its job would see (put back between programs).
MESSY_REFERENCE = """
import builtins, os, random, signal, sys
builtins.sorted = lambda *args, **kwargs: [42]
random.seed(7)
sys.modules["math"] = None
sys.setrecursionlimit(80)
signal.signal(signal.SIGALRM, signal.SIG_IGN)
os.chdir("/")
def double(x):
    return 2 * x
"""
DEEP_REFERENCE = "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"


def task_of(reference: str, calls: list[str], task_id: str | None = None) -> Task:
    return Task(
        id=task_id or uuid.uuid4().hex,
        kind="backend",
        problem_description="p",
        ground_truth=reference,
        test_cases={f"test{i + 1}": call for i, call in enumerate(calls)},
    )


def verdicts(result) -> list[tuple]:
    return [(t.name, t.expected, t.got, t.passed, t.error) for t in result.tests]


@pytest.mark.parametrize("scoring_rules", ["ours", "colbench"])
def test_batched_references_give_the_verdicts_of_references_run_alone(evaluator, scoring_rules):
    samples = load_sample_tasks("backend")
    tricky = [
        task_of("def f(x):\n    return 10 // x", ["f(1)", "f(0)"]),
        task_of("import random\ndef f():\n    return random.random()", ["f()", "f()"]),
        task_of("import no_such_module\ndef f():\n    return 1", ["f()"]),
        task_of(MESSY_REFERENCE, ["double(1)", "double(2)"]),
        task_of(NEXT_REFERENCE, ["stats([3, 1, 2])", "stats([])"]),
        task_of(DEEP_REFERENCE, ["depth(300)"]),
        task_of("def spin(x):\n    while x:\n        pass\n    return x", ["spin(0)", "spin(1)", "spin(0)"]),
    ]
    tasks = samples + tricky
    wrong = "def double(x):\n    return 0\ndef f(*args):\n    return 0\ndef stats(xs):\n    return xs"
    items = [(task, task.ground_truth) for task in tasks] + [(task, wrong) for task in tasks[::3]]
    mode = evaluator.sandbox.mode
    settings = dict(workers=2, per_test_timeout_s=0.5, load_timeout_s=2.0, mode=mode)
    with BackendEvaluator(**settings) as batched, BackendEvaluator(**settings) as alone:
        in_batch = batched.evaluate_batch(items, scoring=scoring_rules)
        one_by_one = [alone.evaluate(task, answer, scoring=scoring_rules) for task, answer in items]
        # Two batches per task file (the samples' and these tests'), one worker each; none crashed.
        assert batched.reference_runs == 4 and alone.reference_runs >= len(tasks)
    def comparable(result) -> list[tuple]:  # ColBench's rules leave random unseeded: values may differ
        return [(name, passed, error) if scoring_rules == "colbench" else (name, expected, got, passed, error)
                for name, expected, got, passed, error in verdicts(result)]  # fmt: skip

    assert [comparable(r) for r in in_batch] == [comparable(r) for r in one_by_one]
    assert not any(r.reference_cached for r in in_batch[: len(tasks)])  # computed for this batch
    if scoring_rules == "ours":  # and the messy reference changed nothing for the ones after it
        assert all(r.success for r in in_batch[: len(samples)] + in_batch[len(samples) + 3 : len(tasks) - 1])


# Each misbehaves on some calls (or at load); the answer is always the plain double.
MISBEHAVING_REFERENCES = {
    "exits on a call": ("import os\ndef double(x):\n    if x == 3:\n        os._exit(3)\n    return 2 * x", ["test4"]),
    "exits at load": ("import os\nos._exit(3)\ndef double(x):\n    return 2 * x", "all"),
    "hangs in C on a call": ("def double(x):\n    if x == 5:\n        sum(range(10 ** 13))\n    return 2 * x", ["test6"]),
    "hangs at load": ("while True:\n    pass\ndef double(x):\n    return 2 * x", "all"),
    "exhausts memory on a call": (
        "def double(x):\n    if x == 2:\n        hog = [bytearray(1 << 26) for _ in range(10 ** 6)]\n    return 2 * x",
        ["test3"],
    ),
}


def test_a_reference_that_crashes_or_hangs_in_a_batch_fails_only_its_own_tests(evaluator):
    tasks, expected_failures = [], []
    for reference, fails in MISBEHAVING_REFERENCES.values():
        tasks += [double_task(uuid.uuid4().hex), task_of(reference, [f"double({i})" for i in range(10)])]
        expected_failures += [[], [f"test{i + 1}" for i in range(10)] if fails == "all" else fails]
    mode = evaluator.sandbox.mode
    started = time.monotonic()
    with BackendEvaluator(workers=1, per_test_timeout_s=0.5, load_timeout_s=2.0, mode=mode) as one:
        results = one.evaluate_batch([(task, DOUBLE) for task in tasks])
        # One batch job, and a fresh one after each of the three that died (the rest raised).
        assert one.reference_runs == 4
    assert [failed(r) for r in results] == expected_failures, [r.tests for r in results]
    for result, fails in zip(results, expected_failures):
        assert all(t.error.startswith("reference ") for t in result.tests if t.name in fails), result.tests
    assert time.monotonic() - started < 60


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
def test_full_colbench_batched_references_agree_with_references_run_alone():
    tasks = _colbench_or_samples(None)
    items = [(task, task.ground_truth) for task in tasks]
    with BackendEvaluator(workers=2) as batched, BackendEvaluator(workers=2) as alone:
        in_batch = batched.evaluate_batch(items)
        with ThreadPoolExecutor(max_workers=2) as pool:  # evaluate() one task at a time, per thread
            one_by_one = list(pool.map(lambda item: alone.evaluate(*item), items))
        assert batched.reference_runs < len(tasks) / 10 and alone.reference_runs == len(tasks)

    def comparable(result) -> list[tuple]:  # object reprs carry their addresses
        return [tuple(re.sub(r"0x[0-9a-f]+", "0x?", str(v)) for v in row) for row in verdicts(result)]

    assert [comparable(r) for r in in_batch] == [comparable(r) for r in one_by_one]


@pytest.mark.slow
def test_full_colbench_self_check_within_a_minute():
    tasks = _colbench_or_samples(None)
    started = time.monotonic()
    with BackendEvaluator(workers=min(2, os.cpu_count() or 1)) as fresh:  # cold reference cache
        checks = fresh.check(tasks)
    elapsed = time.monotonic() - started
    assert _unexplained_failures(tasks, checks) == []
    assert elapsed < 60, f"{len(tasks)} tasks took {elapsed:.1f} s"
