"""Job side: the *targets* a job runs, called as ``target(payload, emit)`` inside the job;
``emit(obj)`` sends one JSON message back:

* ``run_calls`` -- define programs in order, each in a job of its own (or, with ``same_job``,
  all in one, each in a fresh namespace), and evaluate call expressions against them, each
  under its own time budget; return values leave the job as plain data (``encode_value``),
  never as objects the evaluator would have to trust.
* ``exec_source`` -- run a source string that may call ``report(obj)``.

Everything here runs in the job process, a fork of the server (:mod:`.server`), after it has
locked itself down.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import contextlib
import gc
import json
import os
import random
import signal
import sys

from .codec import ENCODE_BUDGET, _encode, _Unencodable, short_repr
from .fds import _write_all

# typing.TYPE_CHECKING without importing typing into the server (each page it holds is paid for
# at every fork); annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Emit = Callable[[Any], None]

ERROR_CHARS = 300


def exec_source(payload: dict[str, Any], emit: Emit) -> None:
    """Target: run ``payload["source"]`` as a module; it may call ``report(obj)``."""
    exec(compile(payload["source"], "<sandboxed>", "exec"), {"__name__": "__sandboxed__", "report": emit})


def run_calls(payload: dict[str, Any], emit: Emit) -> None:
    """Target: define programs in order and evaluate call expressions against each.

    Payload: ``{"programs": [{"name", "source", "calls": {call name: expression}}, ...],
    "load_timeout_s", "call_timeout_s", "seed"}``. Each program is exec'd in a fresh namespace
    under the load budget, then each expression is evaluated in it under the call budget, with
    ``random`` (and numpy's global generator, when loaded) seeded with ``seed`` first.

    A later program never sees an earlier one: :meth:`Sandbox.run` gives each program a job
    process of its own (``pool._job_payloads``), so nothing an earlier program left in memory
    -- its source, its objects, its results -- is there to find, by gc walks or by raw reads.
    Only with ``"same_job": true`` do the programs share this process, for programs that may
    see each other's memory (task references: a job per reference would double the cost of a
    cold evaluation). Each still gets a fresh namespace, and the builtins, ``sys.modules``,
    alarm handler, recursion limit and working directory are put back before the next one
    (:class:`_HarnessState`); what a program changes inside other objects (a module's
    attributes, ``os.environ``'s contents) stays visible to the programs after it.

    Messages: ``{"kind": "loaded", "program", "error"}``, then per call ``{"kind": "call",
    "program", "name", "value" | "error", "repr", "timed_out"}``, then
    ``{"kind": "done", "program"}``.

    A program with a ``"reexec"`` entry runs as ColBench's scorer runs it instead
    (:func:`_run_reexecuting`).
    """
    programs = payload["programs"]
    harness = _HarnessState() if len(programs) > 1 else None  # (several only with same_job)
    for index, program in enumerate(programs):
        programs[index] = None  # _job_main's frame holds the payload too: free the source early
        if harness is not None and index > 0:
            harness.restore()
        signal.signal(signal.SIGALRM, _on_alarm)
        name = program["name"]
        if "reexec" in program:
            _run_reexecuting(name, program, payload["load_timeout_s"], emit)
            continue
        namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": builtins}
        error = _timed(payload["load_timeout_s"], _load_program, program.pop("source"), namespace)
        emit({"kind": "loaded", "program": name, "error": error})
        if error is None:
            for call_name, expression in program["calls"].items():
                emit(
                    _run_call(
                        name, call_name, expression, namespace, payload["call_timeout_s"], payload["seed"]
                    )
                )
        emit({"kind": "done", "program": name})
        defined_classes = any(isinstance(v, type) for v in namespace.values())
        namespace.clear()  # breaks the function <-> globals cycles: the program's code is freed
        if defined_classes:  # classes are cyclic garbage, reachable via __subclasses__ until collected
            gc.collect()


class _HarnessState:
    """What one program could change that would break the next programs of the same job, taken
    when the job starts and put back before each program: the builtins (names a program rebinds,
    adds or deletes), ``sys.modules`` (a module replaced, or blocked by None, which makes imports
    fail), the recursion limit and the working directory; :func:`run_calls` resets the alarm
    handler. The attributes of other modules are not put back: checking thousands of them would
    copy most of the server's pages into the job (each reference touched writes a refcount), a
    quarter of a reference's cost; ``random`` and numpy's generator are re-seeded anyway."""

    def __init__(self) -> None:
        self.builtins = dict(builtins.__dict__)
        self.modules = dict(sys.modules)
        self.recursion_limit = sys.getrecursionlimit()
        self.cwd = os.getcwd()

    def restore(self) -> None:
        """Identity checks only (no program's ``__eq__`` runs here), writing only what changed."""
        sys.setrecursionlimit(self.recursion_limit)
        with contextlib.suppress(OSError):  # (a program made it unreachable: the next one may not mind)
            os.chdir(self.cwd)
        live = builtins.__dict__
        for name in [name for name in live if name not in self.builtins]:
            del live[name]
        for saved, current in ((self.builtins, live), (self.modules, sys.modules)):
            for name, value in saved.items():
                if current.get(name) is not value:
                    current[name] = value
        for name in [name for name, module in sys.modules.items() if module is None and name not in self.modules]:
            del sys.modules[name]


def _run_reexecuting(name: str, program: dict[str, Any], load_timeout_s: float, emit: Emit) -> None:
    """Run one program as ColBench's scorer does (``sweet_rl.utils.code_utils``; the rules are in
    ``simulators.scoring.colbench``), with the same messages as :func:`run_calls`.

    ``program["reexec"]`` is ``{"module_name", "call_timeout_s"}``. The reference calls
    ``exec(source)`` and then ``eval(call)`` inside a function, once per call: the source runs
    with that module's globals (here a dict shared by every call of the program, holding the
    names the module had) and the function's locals as a fresh dict, so everything the source
    defines lands in that dict, where its own functions cannot see it. One budget covers exec
    and eval, as the reference's alarm did. ``random`` is not seeded: the reference does not.
    """
    settings = program["reexec"]
    source = program.pop("source")
    compiled: list[Any] = []
    error = _timed(load_timeout_s, lambda: compiled.append(compile(source, "<solution>", "exec", dont_inherit=True)))
    emit({"kind": "loaded", "program": name, "error": error})
    if error is None:
        import multiprocessing
        import queue

        module_globals: dict[str, Any] = {
            "__name__": settings["module_name"],
            "__builtins__": builtins,
            "multiprocessing": multiprocessing,
            "signal": signal,
            "Empty": queue.Empty,
        }
        for call_name, expression in program["calls"].items():
            emit(_run_reexecuted_call(
                name, call_name, expression, compiled[0], source, module_globals, settings["call_timeout_s"]
            ))
        module_globals.clear()  # breaks the function <-> globals cycles
    compiled.clear()
    emit({"kind": "done", "program": name})
    gc.collect()  # classes are cyclic garbage, reachable via __subclasses__ until collected


def _run_reexecuted_call(
    program: str, name: str, expression: str, code: Any, source: str, module_globals: dict[str, Any], budget_s: float
) -> dict[str, Any]:
    message: dict[str, Any] = {"kind": "call", "program": program, "name": name}

    def run() -> Any:
        # The reference function's own locals (its parameters), which exec'd code sees and may rebind.
        scope: dict[str, Any] = {"function_definition": source, "test_case": expression}
        exec(code, module_globals, scope)
        # eval() re-reads the frame's locals into that dict first: the parameters come back and
        # the unbound ``e`` of its ``except Exception as e`` goes away.
        scope.update(function_definition=source, test_case=expression)
        scope.pop("e", None)
        value = eval(expression, module_globals, scope)
        message["self_equal"] = _equals_itself(value)
        return value

    return _call_outcome(message, budget_s, run)


def _equals_itself(value: Any) -> bool:
    """Whether ``bool(value == value)`` is True: not for NaN, nor for a NumPy array of other than
    one element (its ``==`` has no truth value), which the reference's ``==`` cannot pass."""
    try:
        return bool(value == value)
    except Exception:
        return False


class _CallTimeout(BaseException):
    """Raised by SIGALRM in the job. A BaseException, so ``except Exception`` cannot swallow it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _CallTimeout


def _load_program(source: str, namespace: dict[str, Any]) -> None:
    """Exec a program. When its top-level code raises, run it again in a fresh namespace
    statement by statement, skipping failing top-level *expressions* (a leftover example call
    such as ``print(f(3))``) instead of letting them sink the definitions."""
    fresh = dict(namespace)
    try:
        # dont_inherit: this module's `from __future__ import annotations` must not leak in
        exec(compile(source, "<solution>", "exec", dont_inherit=True), namespace)
        return
    except Exception:
        namespace.clear()
        namespace.update(fresh)
    flags = 0
    for node in ast.parse(source, "<solution>").body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":  # applies to what follows
            for alias in node.names:
                flags |= getattr(getattr(__future__, alias.name, None), "compiler_flag", 0)
        code = compile(
            ast.Module(body=[node], type_ignores=[]), "<solution>", "exec", flags, dont_inherit=True
        )
        try:
            exec(code, namespace)
        except Exception:
            if not isinstance(node, ast.Expr):
                raise


def _run_call(
    program: str, name: str, expression: str, namespace: dict[str, Any], budget_s: float, seed: int
) -> dict[str, Any]:
    message: dict[str, Any] = {"kind": "call", "program": program, "name": name}
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed)
    return _call_outcome(message, budget_s, lambda: eval(expression, namespace))


def _call_outcome(message: dict[str, Any], budget_s: float, run: Callable[[], Any]) -> dict[str, Any]:
    """``message`` with what ``run()`` returned (``value``, ``repr``) or why it failed (``error``,
    ``timed_out``), run under the call budget."""
    try:
        signal.setitimer(signal.ITIMER_REAL, budget_s)
        try:
            value = run()
            message["value"] = _encode(value, [ENCODE_BUDGET], 0)
            message["repr"] = short_repr(value)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:  # whatever the program does, this call just failed
        message.pop("value", None)
        message["error"] = _describe_error(exc, budget_s)
        message["timed_out"] = isinstance(exc, _CallTimeout)
    return message


def _timed(budget_s: float, function: Callable[..., Any], *args: Any) -> str | None:
    """Run under a SIGALRM budget; the error in words, or None."""
    try:
        signal.setitimer(signal.ITIMER_REAL, budget_s)
        try:
            function(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:
        return _describe_error(exc, budget_s)
    return None


def _describe_error(exc: BaseException, budget_s: float) -> str:
    """``Type: message``. Runs inside the job, where a hostile ``__str__`` can only hurt the job:
    a hang is cut off by the no-progress budget, a raise ends the job (and charges the call)."""
    if isinstance(exc, _CallTimeout):
        return f"timed out after {budget_s:g} s"
    if isinstance(exc, _Unencodable):
        return str(exc)
    try:
        detail = str(exc)
    except Exception:
        detail = ""
    name = type(exc).__name__
    return f"{name}: {detail}"[:ERROR_CHARS] if detail else name


class _Emitter:
    """``emit(obj)`` inside a job: one JSON line per message on the result pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __call__(self, message: Any) -> None:
        _write_all(self._fd, (json.dumps(message, separators=(",", ":")) + "\n").encode())


_TARGETS = {"run_calls": run_calls, "exec_source": exec_source}
