"""ColBench's own backend scorer (``scoring="colbench"``), one hand-made case per rule of the
reference implementation (sweet_rl/utils/code_utils.py), each beside what our scorer says.
Real sandboxes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from simulators import scoring
from simulators.domain import ANSWER_MARKER, Episode, Task, Turn
from simulators.sandbox import NAN, Opaque
from simulators.scoring.backend import BackendEvaluator
from simulators.scoring.colbench import (
    BLACKLIST,
    REFERENCE_MODULE,
    blacklisted,
    reference_answer,
    reference_code,
    reference_equal,
)

REPO = Path(__file__).resolve().parents[1]
DOUBLE = "def double(x):\n    return 2 * x\n"


def task_of(ground_truth: str, calls: list[str]) -> Task:
    return Task(
        id=f"cb-{uuid.uuid4().hex}",
        kind="backend",
        problem_description="p",
        ground_truth=ground_truth,
        test_cases={f"test{i + 1}": call for i, call in enumerate(calls)},
    )


def double_task() -> Task:
    return task_of(DOUBLE, [f"double({i})" for i in range(4)])


@pytest.fixture(scope="module")
def evaluator():
    with BackendEvaluator(workers=2, per_test_timeout_s=1.0, load_timeout_s=2.0) as ev:
        yield ev


def both(evaluator, task: Task, answer: str) -> tuple[float, float]:
    """(our tests_passed, ColBench's tests_passed) for one answer."""
    return (evaluator.evaluate(task, answer).tests_passed,
            evaluator.evaluate(task, answer, scoring="colbench").tests_passed)


# -- rule: a test passes only when the reference's output is not None ---------------------------


def test_a_test_whose_reference_returns_none_fails_even_for_the_reference_itself(evaluator):
    reference = "def lookup(key):\n    return {'a': 1, 'b': 2}.get(key)\n"
    task = task_of(reference, ["lookup('a')", "lookup('zzz')", "lookup('b')", "lookup(None)"])
    ours = evaluator.evaluate(task, reference)
    theirs = evaluator.evaluate(task, reference, scoring="colbench")
    assert ours.success  # None == None: the reference agrees with itself
    assert [t.passed for t in theirs.tests] == [True, False, True, False]
    assert theirs.tests_passed == 0.5 and theirs.tests[1].error == "reference returned None"


def test_a_reference_that_raises_counts_as_none(evaluator):
    task = task_of("def inverse(x):\n    return 1 / x\n", ["inverse(2)", "inverse(0)"])
    result = evaluator.evaluate(task, "def inverse(x):\n    return 0.5 if x == 2 else None", scoring="colbench")
    assert [t.passed for t in result.tests] == [True, False]
    assert result.tests[1].error.startswith("reference returned None (ZeroDivisionError")


# -- rule: the outputs compare with ==, as the reference compares them ---------------------------


def test_outputs_compare_with_plain_equality(evaluator):
    def passes(reference: str, answer: str) -> bool:
        task = task_of(f"def f(x):\n    return {reference}\n", ["f(1)"])
        return evaluator.evaluate(task, f"def f(x):\n    return {answer}", scoring="colbench").success

    assert passes("1", "1.0") and passes("True", "1") and passes("{'a': {1, 2}}", "{'a': {2, 1}}")
    assert not passes("(1, 2)", "[1, 2]") and not passes("0.3", "0.1 + 0.2")
    # NaN never equals NaN under ==; ours counts two NaNs as agreeing
    assert not passes("float('nan')", "float('nan')") and not passes("[float('nan')]", "[float('nan')]")


def test_a_numpy_array_cannot_pass_because_its_equality_has_no_truth_value(evaluator):
    pytest.importorskip("numpy")
    task = task_of("def pair(x):\n    return [x, 2 * x]\n", ["pair(1)", "pair(3)"])
    answer = "def pair(x):\n    import numpy\n    return numpy.array([x, 2 * x])"
    assert both(evaluator, task, answer) == (1.0, 0.0)  # the reference's == raises ValueError: not counted


def test_equality_scores_the_fraction_of_tests_passed(evaluator):
    answer = "def double(x):\n    return 2 * x if x != 3 else 0"
    result = evaluator.evaluate(double_task(), answer, scoring="colbench")
    assert result.tests_passed == 0.75 and not result.success and result.scoring == "colbench"


def test_objects_of_classes_the_code_defines_never_compare_equal(evaluator):
    point = ("def f(x):\n    from dataclasses import dataclass\n\n    @dataclass\n    class P:\n        x: int\n"
             "    return P(x)\n")
    task = task_of(point, ["f(1)"])
    assert both(evaluator, task, point) == (1.0, 0.0)  # two calls, two P classes: dataclass == says False
    assert reference_equal(Opaque(f"{REFERENCE_MODULE}.P", "P(x=1)"), Opaque(f"{REFERENCE_MODULE}.P", "P(x=1)")) is False
    assert reference_equal(Opaque("collections.deque", "deque([1])"), Opaque("collections.deque", "deque([1])"))
    assert reference_equal([NAN], [NAN]) is False and reference_equal([1, (2, 3)], [1, (2, 3)])


# -- rule: the answer runs the way the reference runs it (exec inside a function) ----------------


def test_a_top_level_helper_is_invisible_to_the_function_that_calls_it(evaluator):
    answer = "def helper(x):\n    return x + x\n\ndef double(x):\n    return helper(x)\n"
    assert both(evaluator, double_task(), answer) == (1.0, 0.0)
    result = evaluator.evaluate(double_task(), answer, scoring="colbench")
    assert "NameError: name 'helper' is not defined" in result.tests[0].error


def test_recursion_and_module_level_imports_fail_but_imports_inside_the_function_work(evaluator):
    factorial = "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n"
    task = task_of(factorial, ["fact(1)", "fact(5)"])
    # fact(1) never recurses, so it returns; fact(5) cannot find fact
    assert [t.passed for t in evaluator.evaluate(task, factorial, scoring="colbench").tests] == [True, False]
    outer = "import math\ndef double(x):\n    return int(math.fsum([x, x]))\n"
    inner = "def double(x):\n    import math\n    return int(math.fsum([x, x]))\n"
    assert both(evaluator, double_task(), outer) == (1.0, 0.0)
    assert both(evaluator, double_task(), inner) == (1.0, 1.0)


def test_top_level_code_reruns_for_every_call_and_can_use_what_it_defined(evaluator):
    # top-level statements look names up in the locals first, so this call works at top level
    answer = "def double(x):\n    return 2 * x\nexample = double(21)\nprint(example)\n"
    assert both(evaluator, double_task(), answer) == (1.0, 1.0)
    failing_example = "def double(x):\n    return 2 * x\nprint(double('a') + 1)\n"  # raises at top level
    assert both(evaluator, double_task(), failing_example) == (1.0, 0.0)  # ours skips a failing expression


# -- rule: the code is taken out of the answer as the reference does it --------------------------


def test_reference_code_takes_the_first_python_fence_then_the_first_fence_else_everything():
    first, second = "def helper():\n    return 1\n", DOUBLE
    assert reference_code(f"Try:\n```python\n{first}```\nthen\n```python\n{second}```") == "\n" + first
    assert reference_code(f"```py\n{DOUBLE}```") == "py\n" + DOUBLE  # the tag stays in
    assert reference_code(f"```python\n{DOUBLE}") == "\n" + DOUBLE  # an unclosed fence runs to the end
    assert reference_code(f"Here it is:\n{DOUBLE}Enjoy!") == f"Here it is:\n{DOUBLE}Enjoy!"


def test_code_extraction_decides_the_score(evaluator):
    usage_first = f"Usage:\n```python\nprint(double(3))\n```\nCode:\n```python\n{DOUBLE}```"
    assert both(evaluator, double_task(), usage_first) == (1.0, 0.0)  # the reference runs only the usage
    assert both(evaluator, double_task(), f"```py\n{DOUBLE}```") == (1.0, 0.0)  # NameError: py
    assert both(evaluator, double_task(), f"Sure, here you go:\n{DOUBLE}") == (1.0, 0.0)  # SyntaxError
    assert both(evaluator, double_task(), f"Sure:\n```python\n{DOUBLE}```\nEnjoy!") == (1.0, 1.0)


def test_the_answer_is_cut_from_the_last_turn_as_the_environment_cuts_it(evaluator):
    def episode(last_turn: str, answer: str) -> Episode:
        return Episode(task=double_task(), turns=[Turn("human", "p"), Turn("agent", last_turn)], answer=answer)

    spaced = episode(f"{ANSWER_MARKER} {DOUBLE}", DOUBLE.strip())  # our rollout strips; the environment does not
    assert reference_answer(spaced) == " " + DOUBLE
    twice = episode(f"THOUGHT: x OUTPUT: {ANSWER_MARKER}\n{DOUBLE}{ANSWER_MARKER} bye OUTPUT: more", "")
    assert reference_answer(twice) == "\n" + DOUBLE
    assert reference_answer(episode("no marker: ran out of rounds", "no marker: ran out of rounds")) == (
        "no marker: ran out of rounds")
    scoring.score_episodes([spaced], scoring="colbench")
    assert spaced.reward == 0.0 and "IndentationError" in spaced.scores["tests"][0]["error"]
    scoring.score_episodes([spaced])
    assert spaced.reward == 1.0


# -- rule: answers containing a blacklisted string score 0 ---------------------------------------


@pytest.mark.parametrize("word", BLACKLIST)
def test_an_answer_containing_a_blacklisted_string_scores_0(evaluator, word):
    answer = f"{DOUBLE}# note: this needs no {word} at all\n"
    result = evaluator.evaluate(double_task(), answer, scoring="colbench")
    assert result.tests_passed == 0.0 and repr(word) in result.error
    assert blacklisted(answer) == word
    assert evaluator.evaluate(double_task(), answer).success  # ours: a comment is harmless


def test_the_blacklist_reads_prose_outside_the_code_and_print_is_allowed(evaluator):
    prose = f"You could also call sys.exit() later.\n```python\n{DOUBLE}```"
    assert both(evaluator, double_task(), prose) == (1.0, 0.0)
    printing = "```python\ndef double(x):\n    print('doubling', x)\n    return 2 * x\n```"
    assert both(evaluator, double_task(), printing) == (1.0, 1.0)


# -- recording, self-check, command line ---------------------------------------------------------


def test_episodes_record_which_scorer_scored_them_and_keep_both():
    helper = "def helper(x):\n    return x + x\ndef double(x):\n    return helper(x)\n"
    episode = Episode(task=double_task(), turns=[Turn("human", "p"), Turn("agent", f"{ANSWER_MARKER}\n{helper}")],
                      answer=helper)
    scoring.score_episodes([episode])
    assert episode.scores["scoring"] == "ours" and episode.reward == 1.0
    scoring.score_episodes([episode], scoring="colbench")
    assert episode.scores["scoring"] == "colbench" and episode.reward == 0.0 and not episode.scores["success"]
    assert episode.scores["by_scorer"] == {"ours": {"tests_passed": 1.0, "success": True},
                                           "colbench": {"tests_passed": 0.0, "success": False}}
    assert scoring.by_scorer_summary([episode]) == {
        "colbench": {"n": 1, "tests_passed": 0.0, "success_rate": 0.0},
        "ours": {"n": 1, "tests_passed": 1.0, "success_rate": 1.0}}


def test_an_unknown_scorer_is_refused(evaluator):
    with pytest.raises(ValueError, match="scoring must be one of ours, colbench"):
        evaluator.evaluate(double_task(), DOUBLE, scoring="paper")
    with pytest.raises(ValueError, match="scoring must be one of"):
        scoring.score_episodes([], scoring="hal")


def test_check_tasks_cli_reports_the_reference_rules(tmp_path):
    recursive = task_of("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n", ["fact(3)", "fact(4)"])
    rows = [double_task().to_colbench(), recursive.to_colbench()]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def check(*flags: str) -> tuple[dict, str]:
        run = subprocess.run([sys.executable, "-m", "simulators", "check-tasks", str(path), *flags],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
        return json.loads(run.stdout.strip().splitlines()[-1]), run.stdout

    ours, _ = check()
    theirs, output = check("--scoring", "colbench")
    assert (ours["ok"], ours["scoring"]) == (2, "ours")
    assert (theirs["ok"], theirs["failed"], theirs["scoring"]) == (1, 1, "colbench")
    assert "all tests: reference returned None (NameError: name 'fact' is not defined)" in output


# -- the sandbox still holds: hostile answers fail their own test only ---------------------------

HOSTILE_ON_3 = {
    "infinite loop": "while True:\n            pass",
    "memory bomb": "hog = [bytearray(1 << 26) for _ in range(10 ** 6)]",
    # ``signal`` is one of the scorer module's globals, so the answer's function can reach it unimported
    "alarm ignored": "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n        while True:\n            pass",
}


@pytest.mark.parametrize("behaviour", list(HOSTILE_ON_3))
def test_a_hostile_call_fails_only_its_own_test_under_the_reference_rules(evaluator, behaviour):
    answer = f"def double(x):\n    if x == 3:\n        {HOSTILE_ON_3[behaviour]}\n    return 2 * x\n"
    result = evaluator.evaluate(double_task(), answer, scoring="colbench")
    assert [t.passed for t in result.tests] == [True, True, True, False], result.tests
    assert result.tests[3].error


def test_reference_results_are_cached_per_scorer(evaluator):
    task = double_task()
    assert not evaluator.evaluate(task, DOUBLE).reference_cached
    first, second = (evaluator.evaluate(task, DOUBLE, scoring="colbench") for _ in range(2))
    assert not first.reference_cached and second.reference_cached and first.success and second.success


def test_training_evaluate_scores_with_the_chosen_scorer_and_keeps_both(tmp_path):
    from simulators.trajectories import load_episodes
    from training.evaluate import EvaluateConfig, run_evaluation

    helper = "def helper(x):\n    return x + x\n\ndef double(x):\n    return helper(x)\n"
    script = tmp_path / "agent.json"
    script.write_text(json.dumps([f"{ANSWER_MARKER}\n```python\n{helper}```"]))
    tasks = [double_task()]
    common = dict(model=f"scripted:{script}", simulator=f"scripted:{script}", max_rounds=1)
    ours = run_evaluation(EvaluateConfig(out=str(tmp_path / "ours.jsonl"), **common), tasks, progress=False)
    assert (ours["scoring"], ours["tests_passed"]) == ("ours", 1.0)
    theirs = run_evaluation(EvaluateConfig(out=str(tmp_path / "theirs.jsonl"), scoring="colbench",
                                           against=str(tmp_path / "ours.jsonl"), **common), tasks, progress=False)
    assert (theirs["scoring"], theirs["tests_passed"], theirs["success_rate"]) == ("colbench", 0.0, 0.0)
    assert theirs["by_scorer"]["ours"]["tests_passed"] == 1.0 and theirs["by_scorer"]["colbench"]["tests_passed"] == 0.0
    assert theirs["against"]["ties"] == 1  # the other file was rescored by the same rules, not compared 0 vs 1
    (written,) = load_episodes(tmp_path / "theirs.jsonl").items
    assert written.reward == 0.0 and written.scores["scoring"] == "colbench"
    with pytest.raises(ValueError, match="scoring must be one of"):
        run_evaluation(EvaluateConfig(out=str(tmp_path / "x.jsonl"), scoring="hal", **common), tasks, progress=False)


def test_evaluate_cli_rescores_a_rollout_file_and_reports_both_scorers(tmp_path):
    from simulators.trajectories import load_episodes, write_episodes

    helper = "def helper(x):\n    return x + x\n\ndef double(x):\n    return helper(x)\n"
    episode = Episode(task=double_task(), turns=[Turn("human", "p"), Turn("agent", f"{ANSWER_MARKER}\n{helper}")],
                      answer=helper)
    path = tmp_path / "rollouts.jsonl"
    write_episodes([episode], path)

    def evaluate(*flags: str) -> dict:
        run = subprocess.run([sys.executable, "-m", "simulators", "evaluate", str(path), *flags],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
        return json.loads(run.stdout.strip().splitlines()[-1])

    assert evaluate()["tests_passed"] == 1.0
    summary = evaluate("--scoring", "colbench")
    assert summary["tests_passed"] == 0.0 and summary["reward"] == 0.0
    assert summary["by_scorer"] == {"colbench": {"n": 1, "tests_passed": 0.0, "success_rate": 0.0},
                                    "ours": {"n": 1, "tests_passed": 1.0, "success_rate": 1.0}}
    (written,) = load_episodes(path).items
    assert written.scores["scoring"] == "colbench"
