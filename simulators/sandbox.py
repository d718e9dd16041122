"""Run untrusted, model-written Python in disposable, locked-down processes.

Threat model: the code is hostile. It may loop forever, fork-bomb, exhaust memory, write files,
open sockets, signal or inspect other processes, print gigabytes, or exit at any moment. The
evaluating process must survive all of that, get an answer back, and leave nothing behind.

Process layout (Linux only)::

    evaluator (any thread) --JSON lines--> server (one per worker, a pre-forked "zygote")
                                              | fork per job
                                              v
                                            job (unprivileged uid, runs the untrusted code)

A *server* is started once per worker with ``sys.executable -S`` and a scrubbed environment
(not ``-I``: it would also drop ``PYTHONHASHSEED``, which is pinned so that set ordering agrees
between processes). ``-S`` skips ``site`` and its ``.pth`` hooks (an editable install of this
repository among them); the evaluator's site-packages directories are appended to ``sys.path``
instead, so jobs may import numpy when the evaluator has it, and the stdlib always works. The
server loads this file alone -- not the ``simulators`` package -- and sets up the isolation
once; every job is then a ``fork`` of that small, initialised interpreter instead of a 15-80 ms
interpreter start. On a VM every page a process maps is paid for at fork, on write and at
exit, so the server's heap is kept lean: modules only the evaluator side needs are imported
where they are used, not at the top of this file.

Isolation layers, each reported in :class:`Isolation` (``Sandbox.isolation``):

* network -- the server enters a fresh network namespace (no interface is up, not even
  loopback). Fallback: an audit hook refuses every socket operation.
* filesystem -- the server enters a private mount namespace and chroots into a read-only view
  holding only ``/usr``, ``/etc``, the Python installation(s) and ``/dev/{null,zero,...}``: the
  repository, task files and datasets are not visible at all. The only writable place is a
  size-capped tmpfs on ``/tmp``, the job's working directory, emptied after every job.
  Fallback: a fresh host temp directory as scratch (deleted after the job) and an audit hook
  refusing writes outside it.
* processes -- every job is pid 1 of its own PID namespace: when it exits or is killed, the
  kernel kills everything it spawned, even processes that called ``setsid`` to escape a process
  group. As in a container started without an init, the job's ``getppid()`` is 0 (its parent is
  outside the namespace, invisible and unsignalable). The kernel shields a namespace's pid 1
  from signals it sends itself or its own group; an audit hook restores the normal outcome (the
  job exits with 128 + signal), so an answer that "kills its parent" or itself fails as it would
  anywhere else. (A separate init per job would give these semantics natively, but a second
  fork per job doubled the per-job cost on the 2-core reference machine.) SysV IPC is disabled.
  Fallback: the job leads its own process group, which is SIGKILLed after the job, and
  fork/exec/kill are refused by the audit hook.
* user -- when the server runs as root, jobs run under an unused uid (``UID_BASE`` + server
  pid, so each server has its own): no capabilities, ``no_new_privs`` (setuid binaries cannot
  regain root), and ``RLIMIT_NPROC`` finally means something (root ignores it, and per-uid
  counting would otherwise mix with every other process of that uid). Without root, jobs keep
  the evaluator's uid and ``RLIMIT_NPROC`` is not set.

The fallbacks are best effort: an audit hook runs inside the process it guards (it refuses
ctypes, the usual way around it, but is not a security boundary). They are used only where the
kernel refuses namespaces (no root / no CAP_SYS_ADMIN), and the result says so.

Always applied to a job: RLIMIT_CPU (from the job's wall budget), RLIMIT_AS, RLIMIT_FSIZE,
RLIMIT_NOFILE, RLIMIT_CORE=0, RLIMIT_MSGQUEUE=0, stdin/stdout on /dev/null (prints are
discarded), stderr kept up to a cap, a wall-clock and an optional no-progress budget enforced
from outside with SIGKILL, and PR_SET_PDEATHSIG so a job dies with its server. The server itself
does not use PR_SET_PDEATHSIG (it fires when the *thread* that forked it exits, and evaluators
start servers from pool threads); it exits on EOF of its request pipe and polls ``getppid()``.

Jobs run one of the *targets* defined here, called as ``target(payload, emit)`` inside the job;
``emit(obj)`` sends one JSON message back:

* ``run_calls`` -- define programs in order, each in its own namespace, and evaluate call
  expressions against them, each under its own time budget; return values leave the job as
  plain data (``encode_value``), never as objects the evaluator would have to trust.
* ``exec_source`` -- run a source string that may call ``report(obj)``.

Everything a job sends is untrusted: :class:`SandboxRun` carries the messages in arrival order
and callers must validate them.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import contextlib
import ctypes
import datetime
import fcntl
import gc
import json
import math
import os
import random
import re
import resource
import select
import signal
import stat
import sys
import time
from dataclasses import asdict, dataclass
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    Emit = Callable[[Any], None]

UID_BASE = 1_500_000_000  # jobs of server N run as uid UID_BASE + N (an unused, unnamed uid)
NOBODY_UID = 65534  # used when the per-server uid is refused (e.g. inside a user namespace)
SERVER_START_TIMEOUT_S = 60.0  # a first start on a busy machine can be slow
RESPONSE_GRACE_S = 10.0  # how much longer than a job's wall budget the evaluator waits for a server
EXIT_DRAIN_S = 1.0  # after a job exits, how long to keep reading output its leftovers may write
PARENT_POLL_S = 0.5  # how often an idle server checks that the evaluator still exists
DRAIN_INTERVAL_S = 0.05  # how often a server empties a running job's pipes
ENCODE_BUDGET = 100_000  # per returned value: one unit per element, one per 32 chars of text
MAX_ENCODE_DEPTH = 100
REPR_CHARS = 300
ERROR_CHARS = 300

_THIS_FILE = os.path.abspath(__file__)
# The server is this file alone, loaded under its usual name; '' (cwd) leaves sys.path first.
_BOOTSTRAP = (
    "import importlib.util, sys; del sys.path[0]; "
    "spec = importlib.util.spec_from_file_location('simulators.sandbox', sys.argv.pop(1)); "
    "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; "
    "spec.loader.exec_module(module); module.serve()"
)
_SERVER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PYTHONHASHSEED": "0",  # same str hashes in every server: set iteration order agrees
    "PYTHONDONTWRITEBYTECODE": "1",
    # numeric libraries would otherwise start a thread per core at import
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
# What a job may see besides the Python installation itself.
_VISIBLE_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_VISIBLE_DEVICES = ("null", "zero", "full", "random", "urandom")
_SCRATCH = "/tmp"  # the job's scratch and working directory inside the chroot
_RESULT_PIPE_BYTES = 1 << 20  # room for a whole job's messages: it never waits on the server
_EXIT_SETUP_FAILED = 121  # a job could not be set up; its stderr says why

# Linux ABI constants (include/uapi/linux/sched.h, mount.h, prctl.h).
_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38


class SandboxError(RuntimeError):
    """The sandbox itself failed (a server would not start or answer); not the job's fault."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-job resource limits. CPU time is derived from each job's wall budget."""

    memory_bytes: int = 1 << 30  # RLIMIT_AS: address space of each job process
    max_processes: int = 16  # RLIMIT_NPROC for the job uid (only when jobs get their own uid)
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file a job may write
    max_open_files: int = 64  # RLIMIT_NOFILE
    scratch_bytes: int = 64 << 20  # size of the tmpfs scratch (namespace mode)
    max_output_bytes: int = 8 << 20  # message bytes kept per job; the rest is dropped
    max_stderr_bytes: int = 4096  # stderr bytes kept per job (for crash diagnostics)


@dataclass(frozen=True)
class Isolation:
    """What the host allowed: one line per layer, and whether each is kernel-enforced."""

    mode: str  # "namespaces": every layer kernel-enforced; "audit": at least one fell back
    network_isolated: bool
    network: str
    filesystem_isolated: bool
    filesystem: str
    processes_isolated: bool
    processes: str
    user: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SandboxRun:
    """What came back from one job. ``messages`` are untrusted JSON values, in arrival order."""

    messages: list[Any]
    wall_budget_s: float
    idle_budget_s: float | None = None
    exit_code: int | None = None  # the job's exit code, when it exited
    killed_by: int | None = None  # the signal that killed the job, when one did
    timed_out: str | None = None  # "wall" or "idle" when the server killed the job
    output_truncated: bool = False
    malformed_messages: int = 0
    stderr: str = ""
    wall_s: float = 0.0
    server_error: str | None = None  # the server died or stopped answering during this job

    @property
    def clean_exit(self) -> bool:
        return self.exit_code == 0 and not (self.timed_out or self.output_truncated or self.server_error)

    def describe(self) -> str:
        """Why the job ended, in words (for test outcomes and logs)."""
        if self.server_error:
            return f"sandbox server failed: {self.server_error}"
        if self.timed_out == "wall":
            return f"timed out (wall-clock budget {self.wall_budget_s:g} s)"
        if self.timed_out == "idle":
            return f"timed out (no progress for {self.idle_budget_s:g} s)"
        if self.output_truncated:
            return "output limit exceeded"
        if self.killed_by is not None:
            name = signal.Signals(self.killed_by).name if self.killed_by in signal.valid_signals() else "?"
            cause = {
                signal.SIGKILL: " (a resource limit, or killed)",
                signal.SIGXCPU: " (CPU time limit)",
                signal.SIGSEGV: " (crash)",
            }.get(self.killed_by, "")
            return f"killed by signal {self.killed_by} {name}{cause}"
        if self.exit_code is not None:
            if self.exit_code > 128 and self.exit_code - 128 in signal.valid_signals():
                name = signal.Signals(self.exit_code - 128).name
                return (
                    f"exited with code {self.exit_code} (128 + {name}: a signal it sent itself or its group)"
                )
            last = (self.stderr.strip().splitlines() or [""])[-1]
            return f"exited with code {self.exit_code}" + (f": {last[:200]}" if last else "")
        return "ended for an unknown reason"


# --------------------------------------------------------------------------------------------
# Values: encoded inside the job, rebuilt in the evaluator
# --------------------------------------------------------------------------------------------


class _Unencodable(Exception):
    pass


def encode_value(value: Any) -> Any:
    """Plain JSON data for ``value`` (raises ``ValueError`` when it is too big or too deep).

    Exact builtin types map to themselves or a one-key tag (tuple, set, dict as key/value
    pairs, bytes, big ints, complex); Decimal, Fraction and datetime types travel by value;
    subclasses of builtins go through their base (built with the *base's* methods, so an
    override cannot lie), numpy values through ``tolist``; anything else becomes
    ``(qualified type name, repr)``.
    """
    try:
        return _encode(value, [ENCODE_BUDGET], 0)
    except _Unencodable as exc:
        raise ValueError(str(exc)) from None


def _encode(value: Any, budget: list[int], depth: int) -> Any:
    if depth > MAX_ENCODE_DEPTH:
        raise _Unencodable("value is nested too deeply to compare")
    kind = type(value)
    budget[0] -= 1 + (len(value) // 32 if kind in (str, bytes, bytearray) else 0)
    if budget[0] < 0:
        raise _Unencodable("value is too large to compare")
    if value is None or kind in (bool, str, float):
        return value
    if kind is int:  # beyond ~4300 digits int->str is refused: ship those as hex
        return value if value.bit_length() < 10_000 else {"int": format(value, "x")}
    deeper = depth + 1
    if kind is list:
        return [_encode(item, budget, deeper) for item in value]
    if kind is tuple:
        return {"tuple": [_encode(item, budget, deeper) for item in value]}
    if kind is dict:
        return {"dict": [[_encode(k, budget, deeper), _encode(v, budget, deeper)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {kind.__name__: [_encode(item, budget, deeper) for item in value]}
    if kind is bytes or kind is bytearray:  # bytearray == bytes under ==
        return {"bytes": bytes(value).hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    if kind is Decimal:
        return {"decimal": str(value)}
    if kind is Fraction:
        return {
            "fraction": [_encode(value.numerator, budget, deeper), _encode(value.denominator, budget, deeper)]
        }
    if kind in (datetime.datetime, datetime.date, datetime.time):
        return {kind.__name__: value.isoformat()}
    if kind is datetime.timedelta:
        return {"timedelta": [value.days, value.seconds, value.microseconds]}
    for base in (int, float, str, list, tuple, dict, set, frozenset):
        if isinstance(value, base):  # e.g. IntEnum, OrderedDict, Counter, namedtuple
            return _encode(_as_base(base, value), budget, depth)
    if getattr(kind, "__module__", "").partition(".")[0] == "numpy" and hasattr(value, "tolist"):
        return _encode(value.tolist(), budget, deeper)
    return {"object": [f"{kind.__module__}.{kind.__qualname__}", short_repr(value)]}


def _as_base(base: type, value: Any) -> Any:
    """A copy of ``value`` as exactly ``base``, made with the base's own methods."""
    if base is int:
        return int.__int__(value)
    if base is float:
        return float.__float__(value)
    if base is str:
        return str.__str__(value)
    if base is dict:
        return dict(dict.items(value))
    return base(base.__iter__(value))


class _NaN:
    """Stands in for float NaN once decoded: equal to itself (identity), to nothing else."""

    def __repr__(self) -> str:
        return "nan"


NAN = _NaN()


@dataclass(frozen=True)
class Opaque:
    """A value of a type that is not rebuilt: equal when type name and repr are."""

    type_name: str
    repr: str


def decode_value(data: Any) -> Any:
    """Rebuild plain Python values from ``encode_value`` data; NaN becomes ``NAN``.

    Only builtin and stdlib value types are constructed, so comparing the result with ``==``
    runs no code from the job. Raises ``ValueError``/``TypeError``/``ArithmeticError`` (or
    ``RecursionError``) on data no honest job would send.
    """
    kind = type(data)
    if data is None or kind in (bool, int, str):
        return data
    if kind is float:
        return NAN if math.isnan(data) else data
    if kind is list:
        return [decode_value(item) for item in data]
    if kind is not dict or len(data) != 1:
        raise ValueError("malformed value")
    ((tag, body),) = data.items()
    if tag == "tuple":
        return tuple(decode_value(item) for item in body)
    if tag == "dict":
        return {decode_value(k): decode_value(v) for k, v in body}
    if tag == "set":
        return {decode_value(item) for item in body}
    if tag == "frozenset":
        return frozenset(decode_value(item) for item in body)
    if tag == "int":
        return int(body, 16)
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(float(body[0]), float(body[1]))
    if tag == "decimal":
        return Decimal(body)
    if tag == "fraction":
        return Fraction(decode_value(body[0]), decode_value(body[1]))
    if tag in ("datetime", "date", "time"):
        return getattr(datetime, tag).fromisoformat(body)
    if tag == "timedelta":
        return datetime.timedelta(days=body[0], seconds=body[1], microseconds=body[2])
    if tag == "object":
        return Opaque(str(body[0]), str(body[1]))
    raise ValueError(f"unknown value tag {tag!r}")


def short_repr(value: Any) -> str:
    """A display string, at most ``REPR_CHARS`` long. Used on values that passed the encoding
    budget, or on opaque objects inside the job under the call's time budget."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} without a usable repr>"
    return text if len(text) <= REPR_CHARS else text[: REPR_CHARS - 3] + "..."


# --------------------------------------------------------------------------------------------
# Targets: what a job runs
# --------------------------------------------------------------------------------------------


def exec_source(payload: dict[str, Any], emit: Emit) -> None:
    """Target: run ``payload["source"]`` as a module; it may call ``report(obj)``."""
    exec(compile(payload["source"], "<sandboxed>", "exec"), {"__name__": "__sandboxed__", "report": emit})


def run_calls(payload: dict[str, Any], emit: Emit) -> None:
    """Target: define programs in order and evaluate call expressions against each.

    Payload: ``{"programs": [{"name", "source", "calls": {call name: expression}}, ...],
    "load_timeout_s", "call_timeout_s", "seed"}``. Each program is exec'd in a fresh namespace
    under the load budget, then each expression is evaluated in it under the call budget, with
    ``random`` (and numpy's global generator, when loaded) seeded with ``seed`` first.

    A later program never sees an earlier one: the earlier namespace is torn down and its
    results have already left the job before the later source is compiled, and from then on an
    audit hook refuses the roads back to leftovers in memory (gc object walks, ctypes, /proc).

    Messages: ``{"kind": "loaded", "program", "error"}``, then per call ``{"kind": "call",
    "program", "name", "value" | "error", "repr", "timed_out"}``, then
    ``{"kind": "done", "program"}``.
    """
    signal.signal(signal.SIGALRM, _on_alarm)
    programs = payload["programs"]
    for index, program in enumerate(programs):
        programs[index] = None  # the payload is shared with the server's frames: drop our copy
        if index == 1:
            sys.addaudithook(_deny_introspection)
        name = program["name"]
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


class _CallTimeout(BaseException):
    """Raised by SIGALRM in the job. A BaseException, so ``except Exception`` cannot swallow it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _CallTimeout


_INTROSPECTION_EVENTS = frozenset(
    {
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys._current_frames",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.call_function",
        "ctypes.cdata",
        "ctypes.cdata/buffer",
        "ctypes.string_at",
        "ctypes.wstring_at",
        "ctypes.addressof",
    }
)


def _deny_introspection(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook for every program after the first: no road back to what earlier ones left."""
    if event in _INTROSPECTION_EVENTS:
        raise PermissionError(f"{event} is not allowed here")
    if event == "open" and isinstance(args[0], (str, bytes)) and os.fsdecode(args[0]).startswith("/proc/"):
        raise PermissionError("/proc is not readable here")


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
    try:
        signal.setitimer(signal.ITIMER_REAL, budget_s)
        try:
            value = eval(expression, namespace)
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


_TARGETS = {"run_calls": run_calls, "exec_source": exec_source}


# --------------------------------------------------------------------------------------------
# Evaluator side
# --------------------------------------------------------------------------------------------


class Sandbox:
    """A pool of ``workers`` sandbox servers; ``run`` is thread-safe and blocks while all are busy.

    ``mode``: "auto" (strongest isolation the host allows), "namespaces" (refuse to start unless
    every layer is kernel-enforced) or "audit" (force the fallback layers, e.g. to test them).
    """

    def __init__(self, *, workers: int = 2, limits: SandboxLimits | None = None, mode: str = "auto") -> None:
        import queue  # (evaluator-side only: see the module docstring)
        import threading
        import weakref

        if mode not in ("auto", "namespaces", "audit"):
            raise ValueError(f"mode must be 'auto', 'namespaces' or 'audit', not {mode!r}")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self.limits = limits or SandboxLimits()
        self.mode = mode
        self.servers_started = 0
        self._slots: queue.SimpleQueue[_ServerProcess | None] = queue.SimpleQueue()
        for _ in range(workers):
            self._slots.put(None)  # a free slot whose server is started on first use
        self._servers: list[_ServerProcess] = []
        self._lock = threading.Lock()
        self._isolation: Isolation | None = None
        self._finalizer = weakref.finalize(self, _stop_servers, self._servers)

    @property
    def isolation(self) -> Isolation:
        """The isolation the servers achieved (starts one server if none has run yet)."""
        if self._isolation is None:
            with self._server():
                pass
        assert self._isolation is not None
        return self._isolation

    def run(self, target: str, payload: Any, *, wall_s: float, idle_s: float | None = None) -> SandboxRun:
        """Run ``target(payload, emit)`` (a name from ``_TARGETS``) in a fresh job process.

        ``wall_s`` bounds the whole job; ``idle_s`` (optional) bounds the time between two
        messages, so a job that reports per step is cut off early when one step hangs.
        Raises :class:`SandboxError` only when no server can be started.
        """
        if target not in _TARGETS:
            raise ValueError(f"unknown sandbox target {target!r} (known: {', '.join(_TARGETS)})")
        request = {"target": target, "payload": payload, "wall_s": wall_s, "idle_s": idle_s}
        with self._server() as server:
            try:
                header, raw = server.request(request, timeout_s=wall_s + RESPONSE_GRACE_S)
            except SandboxError as exc:  # the server died or hung: drop it, blame this job
                server.stop()
                return SandboxRun(
                    messages=[], wall_budget_s=wall_s, idle_budget_s=idle_s, server_error=str(exc)
                )
        if "error" in header:
            raise SandboxError(f"sandbox server refused the job: {header['error']}")
        messages, malformed = _parse_messages(raw)
        return SandboxRun(
            messages=messages,
            wall_budget_s=wall_s,
            idle_budget_s=idle_s,
            exit_code=header["exit_code"],
            killed_by=header["signal"],
            timed_out=header["timed_out"],
            output_truncated=header["output_truncated"],
            malformed_messages=malformed,
            stderr=header["stderr"],
            wall_s=header["wall_s"],
        )

    def close(self) -> None:
        """Stop every server. Call when no ``run`` is in flight."""
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _server(self) -> Iterator[_ServerProcess]:
        server = self._slots.get()
        try:
            if server is None or not server.alive:
                server = None
                server = self._start_server()
            yield server
        finally:
            self._slots.put(server if server is not None and server.alive else None)

    def _start_server(self) -> _ServerProcess:
        server = _ServerProcess({"limits": asdict(self.limits), "mode": self.mode})
        with self._lock:
            self._servers[:] = [s for s in self._servers if s.alive]
            self._servers.append(server)
            self.servers_started += 1
        if self.mode == "namespaces" and server.isolation.mode != "namespaces":
            server.stop()
            raise SandboxError(f"namespace isolation is not available here: {server.isolation}")
        self._isolation = server.isolation
        return server


def _stop_servers(servers: list[_ServerProcess]) -> None:
    for server in servers:
        server.stop()


def _parse_messages(raw: bytes) -> tuple[list[Any], int]:
    messages, malformed = [], 0
    for line in raw.split(b"\n"):
        if not line:
            continue
        try:
            messages.append(json.loads(line))
        except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
            malformed += 1
    return messages, malformed


class _ServerProcess:
    """The evaluator's handle on one server process.

    Requests are JSON lines on its stdin. A response is a JSON header line followed by
    ``message_bytes`` raw bytes: the job's complete message lines, passed through unparsed.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        import site  # (evaluator-side only: see the module docstring)
        import subprocess

        config = {**config, "site_packages": site.getsitepackages()}
        try:
            self._proc: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, "-S", "-c", _BOOTSTRAP, _THIS_FILE, json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd="/",
                env=_SERVER_ENV,
                start_new_session=True,  # its own process group: stop() can kill it at once
                close_fds=True,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start a sandbox server: {exc}") from exc
        self._buffer = bytearray()
        self._stopped = False
        try:
            hello = json.loads(self._read_line(time.monotonic() + SERVER_START_TIMEOUT_S))
        except SandboxError as exc:
            self.stop()
            raise SandboxError(f"sandbox server did not start: {exc}") from exc
        if "fatal" in hello:
            self.stop()
            raise SandboxError(f"sandbox server could not start: {hello['fatal']}")
        self.isolation = Isolation(**hello["isolation"])

    @property
    def alive(self) -> bool:
        return not self._stopped and self._proc.poll() is None

    def request(self, request: dict[str, Any], *, timeout_s: float) -> tuple[dict[str, Any], bytes]:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError as exc:
            raise SandboxError(f"server stopped accepting jobs ({exc})") from exc
        deadline = time.monotonic() + timeout_s
        header = json.loads(self._read_line(deadline))
        return header, self._read_exactly(header.get("message_bytes", 0), deadline)

    def _fill(self, deadline: float) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SandboxError("no answer in time")
        if _select_read(fd, remaining):
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise SandboxError(f"server exited (status {self._proc.poll()})")
            self._buffer += chunk

    def _read_line(self, deadline: float) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            self._fill(deadline)
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            self._fill(deadline)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def stop(self) -> None:
        import subprocess

        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(OSError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()  # EOF: the server finishes its loop and exits
        try:
            self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _select_read(fd: int, timeout: float) -> bool:
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)


# --------------------------------------------------------------------------------------------
# Server side: everything below runs in the server process and in the jobs it forks.
# --------------------------------------------------------------------------------------------


def serve() -> None:
    """Entry point of a server process (see ``_BOOTSTRAP``)."""
    config = json.loads(sys.argv[1])
    sys.path.extend(config["site_packages"])
    out = sys.stdout.buffer
    try:
        server = _Server(SandboxLimits(**config["limits"]), config["mode"], config["site_packages"])
    except Exception as exc:  # report why instead of dying silently
        out.write(json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        out.flush()
        return
    out.write(json.dumps({"isolation": server.isolation.to_dict()}).encode() + b"\n")
    out.flush()
    # Everything the server holds now is shared with every job it forks. Frozen, the jobs' garbage
    # collector never walks (and so never writes to, and copies) those objects' pages.
    gc.freeze()
    while (job := server.next_job()) is not None:
        try:
            header, raw = server.run(job)
        except _EvaluatorGone:
            return
        # Jobs are forked from this process: keep no copy of a finished job's payload or outputs.
        del job
        header["message_bytes"] = len(raw)
        out.write(json.dumps(header).encode() + b"\n" + raw)
        out.flush()
        del header, raw


class _Libc:
    """The few libc calls Python 3.11 has no wrapper for (os.unshare/setns arrived in 3.12)."""

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(None, use_errno=True)
        text, ulong = ctypes.c_char_p, ctypes.c_ulong
        self._lib.mount.argtypes = [text, text, text, ulong, text]
        self._lib.prctl.argtypes = [ctypes.c_int, ulong, ulong, ulong, ulong]

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")

    def unshare(self, flags: int) -> None:
        self._check(self._lib.unshare(flags), "unshare")

    def setns(self, fd: int, flags: int) -> None:
        self._check(self._lib.setns(fd, flags), "setns")

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, options: str | None = None
    ) -> None:
        def encode(text: str | None) -> bytes | None:
            return None if text is None else os.fsencode(text)

        result = self._lib.mount(encode(source), encode(target), encode(fstype), flags, encode(options))
        self._check(result, f"mount {target}")

    def prctl(self, option: int, value: int) -> None:
        self._check(self._lib.prctl(option, value, 0, 0, 0), "prctl")


class _Server:
    """Sets up the isolation once, then forks one job per request."""

    def __init__(self, limits: SandboxLimits, mode: str, site_packages: list[str]) -> None:
        self.limits = limits
        self.libc = _Libc()
        self.parent_pid = os.getppid()
        self._pidns_fd: int | None = None
        skipped = "not attempted (audit mode requested)"
        net_note = ipc_note = pid_note = fs_note = skipped
        if mode != "audit":
            net_note = self._try(lambda: self.libc.unshare(_CLONE_NEWNET))
            ipc_note = self._try(self._isolate_ipc)
            pid_note = self._try(self._probe_pid_namespace)  # needs the host's /proc: before the chroot
            fs_note = self._try(lambda: self._isolate_filesystem(site_packages))
        self.net_isolated, self.pid_isolated, self.fs_isolated = not net_note, not pid_note, not fs_note
        self.uid, user_note = self._choose_uid() if os.geteuid() == 0 else (None, "")
        if self.fs_isolated and self.uid is not None:
            os.chown(_SCRATCH, self.uid, self.uid)
        kernel_enforced = (
            self.net_isolated and self.fs_isolated and self.pid_isolated and self.uid is not None
        )
        self.isolation = Isolation(
            mode="namespaces" if kernel_enforced else "audit",
            network_isolated=self.net_isolated,
            network="own network namespace, no interfaces up"
            if self.net_isolated
            else f"sockets refused by an audit hook (best effort); no network namespace: {net_note}",
            filesystem_isolated=self.fs_isolated,
            filesystem="read-only chroot of the Python installation; tmpfs scratch emptied after each job"
            if self.fs_isolated
            else "host temp dir as scratch, deleted after the job; writes elsewhere refused by an audit "
            f"hook (best effort); no mount namespace: {fs_note}",
            processes_isolated=self.pid_isolated,
            processes=(
                "each job is pid 1 of its own PID namespace: all its descendants die with it"
                if self.pid_isolated
                else "process group killed after the job; fork/exec/kill refused by an audit hook "
                f"(best effort); no PID namespace: {pid_note}"
            )
            + ("; SysV IPC disabled" if not ipc_note else f"; SysV IPC shared with the host: {ipc_note}"),
            user=f"uid {self.uid} (no capabilities, no_new_privs)"
            if self.uid is not None
            else f"evaluator's uid {os.geteuid()}, no_new_privs" + (f"; {user_note}" if user_note else ""),
        )

    @staticmethod
    def _try(step: Callable[[], None]) -> str:
        """Run one isolation step; '' when it worked, else why not."""
        try:
            step()
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""

    def _isolate_ipc(self) -> None:
        # A fresh IPC namespace per *job* costs ~6 ms to tear down; instead the server gets one
        # and sets its namespaced limits to zero, so no job can create SysV objects at all (they
        # would otherwise outlive the job and be visible to the next one).
        self.libc.unshare(_CLONE_NEWIPC)
        for name, value in (("shmmni", "0"), ("msgmni", "0"), ("sem", "0 0 0 0")):
            with open(f"/proc/sys/kernel/{name}", "w") as fh:
                fh.write(value)

    def _probe_pid_namespace(self) -> None:
        # Keep a handle on our own PID namespace: after each unshare(CLONE_NEWPID) (which only
        # affects children) we setns() back so the next job can get a fresh namespace again.
        fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.libc.unshare(_CLONE_NEWPID)
            self.libc.setns(fd, _CLONE_NEWPID)
        except OSError:
            os.close(fd)
            raise
        self._pidns_fd = fd

    def _isolate_filesystem(self, site_packages: list[str]) -> None:
        """Private mount namespace, then chroot into a read-only view of what Python needs.

        The view is a tmpfs mounted, inside our namespace only, on a directory we do not need
        (so nothing is ever created on, or left behind on, the host).
        """
        self.libc.unshare(_CLONE_NEWNS)
        self.libc.mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount leaks to the host
        python_dirs = sorted(_python_dirs(site_packages), key=len)
        root = _unneeded_directory([*_VISIBLE_DIRS, *python_dirs, "/dev"])
        self.libc.mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
        bound: list[str] = []
        for path in _VISIBLE_DIRS:
            if os.path.islink(path):  # /bin -> usr/bin on merged-/usr systems
                os.symlink(os.readlink(path), root + path)
            elif os.path.isdir(path):
                self._bind(path, root)
                bound.append(path)
        for path in python_dirs:  # a venv inside the repository: only the venv becomes visible
            if not any(path == d or path.startswith(d + "/") for d in bound):
                self._bind(path, root)
                bound.append(path)
        os.makedirs(root + "/dev")
        for name in _VISIBLE_DEVICES:
            if os.path.exists(f"/dev/{name}"):
                with open(f"{root}/dev/{name}", "w"):
                    pass
                self.libc.mount(f"/dev/{name}", f"{root}/dev/{name}", None, _MS_BIND)
        os.makedirs(root + _SCRATCH)
        for mount_point in _mounts_under(root):
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID
            if os.statvfs(mount_point).f_flag & os.ST_NOEXEC:
                flags |= _MS_NOEXEC
            if not mount_point.startswith(root + "/dev/"):
                flags |= _MS_NODEV
            self.libc.mount(None, mount_point, None, flags)
        # The only writable place; mounted after the read-only pass, emptied after every job.
        options = f"size={self.limits.scratch_bytes},nr_inodes=4096,mode=0700"
        self.libc.mount("tmpfs", root + _SCRATCH, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, options)
        os.chroot(root)
        os.chdir("/")

    def _bind(self, path: str, root: str) -> None:
        os.makedirs(root + path, exist_ok=True)
        self.libc.mount(path, root + path, None, _MS_BIND | _MS_REC)

    def _choose_uid(self) -> tuple[int | None, str]:
        """An unprivileged uid that can still read the Python installation, tried in a child."""
        for uid in (UID_BASE + os.getpid(), NOBODY_UID):
            pid = os.fork()
            if pid == 0:
                try:
                    os.setgroups([])
                    os.setresgid(uid, uid, uid)
                    os.setresuid(uid, uid, uid)
                    os.listdir(os.path.dirname(os.__file__))
                    with open(os.__file__, "rb"):
                        pass
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            _, status = os.waitpid(pid, 0)
            if status == 0:
                return uid, ""
        return None, "no unprivileged uid can read the Python installation here"

    # -- per request ------------------------------------------------------------------------

    def next_job(self) -> dict[str, Any] | None:
        """The next request; None on EOF or when the evaluator is gone."""
        while True:
            readable = _select_read(0, PARENT_POLL_S)
            if os.getppid() != self.parent_pid:
                return None
            if readable:
                line = sys.stdin.buffer.readline()  # requests and responses alternate: one line at most
                if not line:
                    return None
                try:
                    job = json.loads(line)
                except ValueError:
                    return {}  # run() answers "bad job"
                return job if isinstance(job, dict) else {}

    def run(self, job: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Fork a job, watch it, clean up after it: (response header, raw message lines)."""
        try:
            target = _TARGETS[job["target"]]
            payload = job["payload"]
            wall_s = float(job["wall_s"])
            idle_s = None if job.get("idle_s") is None else float(job["idle_s"])
        except (KeyError, TypeError, ValueError) as exc:
            return {"error": f"bad job: {type(exc).__name__}: {exc}"}, b""
        scratch = _SCRATCH if self.fs_isolated else self._make_scratch()
        result_r, result_w = os.pipe()
        err_r, err_w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(result_r, fcntl.F_SETPIPE_SZ, _RESULT_PIPE_BYTES)
        try:
            pid = self._fork_job(target, payload, wall_s, scratch, result_w, err_w)
        finally:
            os.close(result_w)
            os.close(err_w)
        try:
            header, raw = self._watch(pid, result_r, err_r, wall_s, idle_s)
            # With a PID namespace, its pid 1 (the job) is reported dead only once the kernel
            # has killed and reaped everything else in it: nothing of the job runs past this.
            _, status = os.waitpid(pid, 0)
            header["exit_code"] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            header["signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            return header, raw
        finally:
            if not self.pid_isolated:  # sweep anything left in the job's process group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            os.close(result_r)
            os.close(err_r)
            if self.fs_isolated:
                os.chmod(_SCRATCH, stat.S_IRWXU)  # the job owns it and may have chmod-ed it
                _empty_dir(_SCRATCH)
            else:
                _remove_tree(scratch)

    def _make_scratch(self) -> str:
        while True:  # mkdir never follows a planted symlink; a taken name is just retried
            scratch = os.path.join(
                os.environ.get("TMPDIR", "/tmp"), f"collab-sandbox-job-{os.urandom(6).hex()}"
            )
            with contextlib.suppress(FileExistsError):
                os.mkdir(scratch, 0o700)
                break
        if self.uid is not None:
            os.chown(scratch, self.uid, self.uid)
        return scratch

    def _fork_job(
        self,
        target: Callable[..., None],
        payload: Any,
        wall_s: float,
        scratch: str,
        result_w: int,
        err_w: int,
    ) -> int:
        if self.pid_isolated:
            self.libc.unshare(_CLONE_NEWPID)  # our next child is pid 1 of a new namespace
        try:
            pid = os.fork()
        except BaseException:
            self._restore_pid_namespace()
            raise
        if pid == 0:
            self._job_main(target, payload, wall_s, scratch, result_w, err_w)
        self._restore_pid_namespace()
        return pid

    def _restore_pid_namespace(self) -> None:
        if self.pid_isolated:
            assert self._pidns_fd is not None
            self.libc.setns(self._pidns_fd, _CLONE_NEWPID)

    def _watch(
        self, pid: int, result_r: int, err_r: int, wall_s: float, idle_s: float | None
    ) -> tuple[dict[str, Any], bytes]:
        """Collect a job's output until it exits; SIGKILL it when a budget runs out.

        The server wakes up when the job exits, at a deadline, or every ``DRAIN_INTERVAL_S`` to
        empty the pipes and note progress, not once per message: on a small machine every
        wake-up is a context switch the job pays for.
        """
        started = time.monotonic()
        wall_deadline = started + wall_s
        idle_deadline = started + idle_s if idle_s is not None else math.inf
        results = _Capture(result_r, self.limits.max_output_bytes)
        errors = _Capture(err_r, self.limits.max_stderr_bytes)
        timed_out: str | None = None
        pidfd = os.pidfd_open(pid)
        try:
            while True:
                now = time.monotonic()
                if os.getppid() != self.parent_pid:  # the evaluator is gone: so are we
                    self._kill(pid)
                    raise _EvaluatorGone
                if timed_out is None and now >= min(wall_deadline, idle_deadline):
                    timed_out = "wall" if now >= wall_deadline else "idle"
                    self._kill(pid)
                if timed_out is None:
                    next_check = min(wall_deadline, idle_deadline, now + DRAIN_INTERVAL_S)
                else:  # killed: wait for the exit to show on the pidfd
                    next_check = now + PARENT_POLL_S
                exited = _select_read(pidfd, max(0.0, next_check - now))
                if results.drain() and idle_s is not None:
                    idle_deadline = time.monotonic() + idle_s
                errors.drain()
                if exited:
                    break
        finally:
            os.close(pidfd)
        if not self.pid_isolated:  # leftovers could still hold the pipes open
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        drain_deadline = time.monotonic() + EXIT_DRAIN_S
        while not (results.eof and errors.eof) and time.monotonic() < drain_deadline:
            open_fds = [c.fd for c in (results, errors) if not c.eof]
            select.select(open_fds, [], [], max(0.0, drain_deadline - time.monotonic()))
            results.drain()
            errors.drain()
        complete, newline, _ = bytes(results.data).rpartition(b"\n")  # a cut-off last line is no message
        header = {
            "timed_out": timed_out,
            "output_truncated": results.truncated,
            "stderr": errors.data.decode("utf-8", "replace"),
            "wall_s": round(time.monotonic() - started, 4),
        }
        return header, complete + newline

    def _kill(self, pid: int) -> None:
        # pid is pid 1 of the job's namespace (its death takes the whole namespace down) or,
        # without PID namespaces, the leader of the job's process group.
        if not self.pid_isolated:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _job_main(
        self,
        target: Callable[..., None],
        payload: Any,
        wall_s: float,
        scratch: str,
        result_w: int,
        err_w: int,
    ) -> None:
        """The forked job process: lock itself down, run the target, never return."""
        exit_code = _EXIT_SETUP_FAILED
        try:
            os.setsid()  # own session and process group (the kill unit without PID namespaces)
            os.chdir(scratch)
            devnull = os.open("/dev/null", os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(err_w, 2)
            os.dup2(result_w, 3)
            os.closerange(4, _max_fd())  # also the server's request/response pipes and pidns handle
            self._set_limits(wall_s)
            self.libc.prctl(_PR_SET_NO_NEW_PRIVS, 1)
            if self.uid is not None:
                os.setgroups([])
                os.setresgid(self.uid, self.uid, self.uid)
                os.setresuid(self.uid, self.uid, self.uid)
            # After the uid change, which clears the parent-death signal. If the server died
            # before this line, the signal never comes; but then nobody reads our result pipe
            # any more, which poll() reports as an error on its write end.
            self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if _reader_gone(3):
                os._exit(_EXIT_SETUP_FAILED)
            os.environ.update(HOME=scratch, TMPDIR=scratch)
            if self.pid_isolated:
                sys.addaudithook(_die_of_own_signals)
            if not (self.net_isolated and self.fs_isolated and self.pid_isolated):
                guard = _AuditGuard(
                    scratch,
                    block_network=not self.net_isolated,
                    guard_files=not self.fs_isolated,
                    block_processes=not self.pid_isolated,
                )
                sys.addaudithook(guard)
            sys.stdin = open(os.devnull)  # noqa: SIM115 -- both live as long as the job
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            exit_code = 1
            target(payload, _Emitter(3))
            exit_code = 0
        except SystemExit as exc:
            exit_code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            with contextlib.suppress(BaseException):
                sys.excepthook(*sys.exc_info())  # the traceback, to the capped stderr
        finally:
            os._exit(exit_code)

    def _set_limits(self, wall_s: float) -> None:
        cpu_s = math.ceil(wall_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL
        resource.setrlimit(resource.RLIMIT_AS, (self.limits.memory_bytes, self.limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limits.max_file_bytes, self.limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.limits.max_open_files, self.limits.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
        if self.uid is not None:  # per-uid count: meaningful only for a uid of our own
            resource.setrlimit(resource.RLIMIT_NPROC, (self.limits.max_processes, self.limits.max_processes))


class _EvaluatorGone(Exception):
    """The evaluator died while a job ran: the job is killed, cleaned up, and the server exits."""


class _Capture:
    """Non-blocking reader of one job pipe; keeps the first ``cap`` bytes, drops the rest."""

    def __init__(self, fd: int, cap: int) -> None:
        self.fd = fd
        self.cap = cap
        self.data = bytearray()
        self.truncated = False
        self.eof = False
        os.set_blocking(fd, False)

    def drain(self) -> bool:
        """Read whatever is there; True when a complete line arrived."""
        got_line = False
        while not self.eof:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            got_line = got_line or b"\n" in chunk
            room = self.cap - len(self.data)
            self.truncated = self.truncated or len(chunk) > room
            self.data += chunk[: max(room, 0)]
        return got_line


class _Emitter:
    """``emit(obj)`` inside a job: one JSON line per message on the result pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __call__(self, message: Any) -> None:
        view = memoryview((json.dumps(message, separators=(",", ":")) + "\n").encode())
        while view:
            view = view[os.write(self._fd, view) :]


class _AuditGuard:
    """The fallback layers, in the job itself; refuses ctypes too (the usual way around a hook)."""

    _PROCESS_EVENTS = frozenset(
        {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen"}
        | {"os.kill", "os.killpg", "pty.spawn"}
    )
    _NETWORK_EVENTS = frozenset(
        {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
    )
    _PATH_EVENTS = frozenset(
        {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink"}
        | {"os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
    )
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def __init__(
        self, scratch: str, *, block_network: bool, guard_files: bool, block_processes: bool
    ) -> None:
        self._scratch = os.path.realpath(scratch)
        self._block_network = block_network
        self._guard_files = guard_files
        self._block_processes = block_processes

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event.startswith("ctypes."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if self._block_network and event in self._NETWORK_EVENTS:
            raise PermissionError("sandbox: network access is not allowed")
        if self._block_processes and event in self._PROCESS_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if not self._guard_files:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & self._WRITE_FLAGS
            )
            if writing and not self._allowed(path):
                raise PermissionError(
                    f"sandbox: writing outside the scratch directory is not allowed: {path!r}"
                )
        elif event in self._PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and not self._allowed(path):
                    raise PermissionError(
                        f"sandbox: changing files outside the scratch directory is not allowed: {path!r}"
                    )

    def _allowed(self, path: Any) -> bool:
        if isinstance(path, int):  # an already-open descriptor
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == "/dev/null" or real == self._scratch or real.startswith(self._scratch + os.sep)


_NOT_FATAL_BY_DEFAULT = frozenset(
    {signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH}
    | {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
)


def _die_of_own_signals(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook for a job that is pid 1 of its namespace, which the kernel shields from
    signals it sends itself or its process group. A normal process dies of them, so does this one
    (with the shell's 128 + signal exit code): an answer that kills "its parent" (getppid() is 0,
    i.e. its own group) or itself fails like it would anywhere else."""
    if event not in ("os.kill", "os.killpg"):
        return
    target, signum = args
    own = target in (0, os.getpid()) if event == "os.kill" else target in (0, os.getpgrp())
    if own and signum not in _NOT_FATAL_BY_DEFAULT and signal.getsignal(signum) == signal.SIG_DFL:
        os._exit(128 + signum)


def _python_dirs(site_packages: list[str]) -> set[str]:
    """The directories a job's interpreter needs: its prefixes and the evaluator's site-packages."""
    dirs = (
        *site_packages,
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(sys.executable),
    )
    return {os.path.realpath(d) for d in dirs if d and os.path.isdir(d)}


def _unneeded_directory(needed: list[str]) -> str:
    """An existing directory, by FHS convention one for temporary mounts, that holds nothing
    the job must see (covering it in a private namespace then hides nothing we bind)."""
    for candidate in ("/mnt", "/media", "/srv", "/tmp"):
        if os.path.isdir(candidate) and not os.path.islink(candidate):
            if not any(path == candidate or path.startswith(candidate + "/") for path in needed):
                return candidate
    raise OSError(0, "no directory to build the read-only view on")


def _mounts_under(root: str) -> list[str]:
    """The mount at ``root`` that was mounted last, and every mount below it, parents first.

    Found by mount id in /proc/self/mountinfo, not by path: the host's own mounts that our tmpfs
    covers are listed under the same paths but are no longer reachable.
    """
    mounts = []  # (mount id, parent id, mount point)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 = space
            mounts.append((int(fields[0]), int(fields[1]), point))
    top = [mount_id for mount_id, _, point in mounts if point == root][-1]
    ours, points = {top}, [root]
    for mount_id, parent_id, point in mounts:  # mountinfo lists parents before their children
        if parent_id in ours and mount_id not in ours:
            ours.add(mount_id)
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"))


def _reader_gone(fd: int) -> bool:
    """True when nobody holds the read end of the pipe whose write end is ``fd``."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _empty_dir(path: str) -> None:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(entry.path)
        else:
            os.unlink(entry.path)


def _remove_tree(path: str) -> None:
    """Remove a job's directory tree, including directories the job made unreadable.

    Runs after every process of the job is dead, so nothing can swap a directory for a symlink
    between a check and the chmod (which follows symlinks: it must never act outside the tree).
    """
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IRWXU)
    for parent, dirnames, _ in os.walk(path):  # top-down: unlock each directory before entering it
        for name in dirnames:
            child = os.path.join(parent, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, stat.S_IRWXU)
    for parent, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(parent, name))
        for name in dirnames:
            child = os.path.join(parent, name)
            with contextlib.suppress(OSError):
                if os.path.islink(child):
                    os.unlink(child)
                else:
                    os.rmdir(child)
    with contextlib.suppress(OSError):
        os.rmdir(path)


__all__ = [
    "NAN",
    "Isolation",
    "Opaque",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxRun",
    "decode_value",
    "encode_value",
    "exec_source",
    "run_calls",
    "short_repr",
]
