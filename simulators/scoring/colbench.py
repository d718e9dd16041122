"""ColBench's own backend scorer, reproduced beside ours so numbers compare with the paper and HAL.

``BackendEvaluator`` (:mod:`simulators.scoring.backend`) applies these rules with
``scoring="colbench"``; the default, ``"ours"``, stays the fair scorer. Read from
facebookresearch/sweet_rl: ``sweet_rl/utils/code_utils.py`` (``check_correctness``,
``get_function_output``, ``code_evaluate``), ``sweet_rl/environments/human_interaction_env.py``
(``step``: how the answer is cut from the agent's turn) and ``scripts/evaluate_code.py``; HAL
(princeton-pli/hal-harness, ``hal/benchmarks/colbench.py``) scores with the same ``code_evaluate``.

1. **Answer** -- the agent's last turn as ``HumanInteractionEnv.step`` cuts it: the text after the
   first ``OUTPUT:`` (when present) up to the next one, then the text after the first
   ``I WANT TO ANSWER:`` up to the next one, not stripped; a turn without the marker (the
   conversation ran out of rounds) is the answer whole (:func:`reference_answer`).
2. **Blacklist** -- an answer containing any of :data:`BLACKLIST` anywhere, prose included
   (the check runs before the code is cut out), scores 0 on every test.
3. **Code** -- the text after the first ``"```python"`` up to the next fence; then, if a fence is
   still there, the text between the first two fences, language tag included (``py`` stays in
   and breaks the code); otherwise the answer as it is: no dedent, no trimming of prose
   (:func:`reference_code`).
4. **Execution** -- for every test call, reference and answer are each run again with
   ``exec(code)`` then ``eval(call)`` inside a function: the code sees the scorer module's
   globals and a fresh dict of locals, so whatever it defines lands in the locals, where its
   own functions cannot see it. A helper function, a recursive call, or a module-level import
   or constant used inside a function raises ``NameError`` (so does a top-level comprehension
   using a top-level name, on Python 3.11). Any exception makes the output ``None``; the
   answer's exec and eval have one second together.
5. **Comparison** -- a test passes when the reference's output is not ``None`` and equals the
   answer's under ``==`` (a ``ValueError`` from it, e.g. comparing NumPy arrays, counts as not
   equal). The reward is the fraction of tests passed; a success is all of them
   (``evaluate_code.py``: ``correctness == 1``).

Where we cannot follow the reference, and why:

* It runs in the sandbox, not in the scoring process: outputs leave the job as data and are
  compared here (:func:`reference_equal`). Plain ``==`` on the rebuilt values gives the
  reference's verdict for builtin and stdlib values; NaN never equals anything (the reference
  can find a NaN equal to itself inside a container when both sides hold the very same
  object; separate processes cannot). An object of a class the code defined never equals
  anything: reference and answer classes come from separate ``exec`` calls, so default and
  dataclass equality say False -- a hand-written ``__eq__`` that says True is not honoured, or
  an answer could score itself.
* The reference's module globals persist across every call, answer and task of a whole
  evaluation (what code stores with ``global``); here they persist across one program's calls.
* Where the reference would crash or hang the whole evaluation (``SystemExit``, an exception
  other than ``ValueError`` from ``==``, a loop that swallows its timeout, an answer of
  ``None``), that test or answer just fails. The reference gives the ground truth no time
  limit; here it has the load plus the call budget.
* On Python 3.13 (PEP 667) the reference's ``exec`` writes into a throw-away snapshot of the
  locals and every output is ``None``; we reproduce its behaviour on Python 3.8-3.12.
"""

from __future__ import annotations

from typing import Any

from simulators.domain import ANSWER_MARKER, Episode
from simulators.sandbox import NAN, Opaque

# Any of these anywhere in the answer text scores it 0 (check_correctness, in this order).
BLACKLIST = ("import os", "from os", "import sys", "from sys", "sudo", "transformers", "exit(", "quit(", "argparse")
# The reference execs code inside this module: its name is what the code's classes carry.
REFERENCE_MODULE = "sweet_rl.utils.code_utils"
OUTPUT_MARKER = "OUTPUT:"  # the reference agent's format; the environment cuts the turn after it
_FENCE = "```"
_PYTHON_FENCE = "```python"


def reference_answer(episode: Episode) -> str | None:
    """The answer the reference environment would have recorded for this episode's last turn
    (``None`` when the episode has no answer). Episodes without agent turns keep their stored
    answer. Cutting is idempotent on trajectories the reference wrote, whose turns were cut already."""
    if episode.answer is None:
        return None
    if not episode.agent_turns:
        return episode.answer
    response = episode.agent_turns[-1].content
    if OUTPUT_MARKER in response:
        response = _between_first_two(response, OUTPUT_MARKER)
    if ANSWER_MARKER in response:
        return _between_first_two(response, ANSWER_MARKER)
    return response


def blacklisted(answer: str) -> str | None:
    """The first blacklisted string the answer contains, or None."""
    return next((word for word in BLACKLIST if word in answer), None)


def reference_code(answer: str) -> str:
    """The code the reference executes for an answer (rule 3)."""
    if _PYTHON_FENCE in answer:
        answer = answer.partition(_PYTHON_FENCE)[2].partition(_FENCE)[0]
    if _FENCE in answer:
        answer = _between_first_two(answer, _FENCE)
    return answer


def reference_equal(expected: Any, got: Any) -> bool:
    """The reference's ``expected == got`` on values rebuilt by ``sandbox.decode_value``; never
    raises (where the reference's ``==`` raises, the test is not passed)."""
    try:
        return bool(_as_compared(expected) == _as_compared(got))
    except Exception:
        return False


def _between_first_two(text: str, marker: str) -> str:
    """``text.split(marker)[1]``: what follows the first marker, up to the next one."""
    return text.partition(marker)[2].partition(marker)[0]


class _Unequal:
    """Stands in for an object of a class the code defined: equal to nothing, itself included."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__


def _as_compared(value: Any) -> Any:
    """``value`` with each NaN a distinct float and each object of a code-defined class unequal."""
    kind = type(value)
    if value is NAN:
        return float("nan")  # a new object each time: NaN == NaN is False, even inside a list
    if kind is Opaque:
        return _Unequal() if value.type_name.startswith(REFERENCE_MODULE + ".") else value
    if kind in (list, tuple, set, frozenset):
        return kind(_as_compared(item) for item in value)
    if kind is dict:
        return {_as_compared(k): _as_compared(v) for k, v in value.items()}
    return value
