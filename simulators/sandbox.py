"""Run untrusted, model-written Python in disposable, locked-down processes.

Threat model: the code is hostile. It may loop forever, fork-bomb, exhaust memory, write files,
open sockets, signal or inspect other processes, print gigabytes, or exit at any moment. The
evaluating process must survive all of that, get an answer back, and leave nothing behind.

Process layout (Linux only)::

    evaluator (any thread) --requests--> server (one per worker, a pre-forked "zygote")
                                              | fork per job (in a user namespace, the
                                              v  server sits below a small keeper process)
                                            job (no capabilities, runs the untrusted code)

A request is a small JSON header and one payload per job; ``run_calls`` gives every program a
job of its own, so no program shares a process with another (see "Memory hygiene" at
``_Server.next_request``: Python code can read raw memory, so what a process once held is
readable to whatever runs in it later, and the server never holds payloads or results where
a job could find them) -- unless the caller asks for ``same_job``, for programs that may see
each other (the references of several tasks of one task file, never an answer).

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

Isolation layers, each reported in :class:`Isolation` (``Sandbox.isolation``). Namespaces need
``CAP_SYS_ADMIN``: a server run as root has it; any other server first enters a user namespace of
its own (``CLONE_NEWUSER``, the evaluator's uid mapped to 0 inside, as rootless containers do),
which gives it those capabilities over the namespaces it creates next -- and nothing outside --
so an ordinary user gets the same layers as root:

* network -- the server enters a fresh network namespace (no interface is up, not even
  loopback). Fallback: an audit hook refuses every socket operation.
* filesystem -- the server enters a private mount namespace and chroots into a read-only view
  holding only ``/usr``, ``/etc``, the Python installation(s) and ``/dev/{null,zero,...}``: the
  repository, task files and datasets are not visible at all. The only writable place is a
  size-capped tmpfs on ``/tmp`` (another path when the Python installation lives under
  ``/tmp``), the job's working directory, emptied after every job. Fallback: a fresh host temp
  directory as scratch (deleted after the job, or by the evaluator when the server was killed),
  measured by the server every ``DRAIN_INTERVAL_S`` (the job is killed once it holds more than
  ``scratch_bytes`` or ``SCRATCH_ENTRIES``, files it unlinked but keeps open included, so the cap
  holds to within what a job writes in one interval), and an audit hook refusing writes outside
  it (paths resolved against a ``dir_fd`` where the call has one), directory fds on anything
  else, and relative paths with ``..`` in an open (its event carries no ``dir_fd``).
* processes -- every job is pid 1 of its own PID namespace: when it exits or is killed, the
  kernel kills everything it spawned, even processes that called ``setsid`` to escape a process
  group. As in a container started without an init, the job's ``getppid()`` is 0 (its parent is
  outside the namespace, invisible and unsignalable). The kernel shields a namespace's pid 1
  from signals it sends itself or its own group; an audit hook restores the normal outcome (the
  job exits with 128 + signal), so an answer that "kills its parent" or itself fails as it would
  anywhere else. (A separate init per job would give these semantics natively, but a second
  fork per job doubled the per-job cost on the 2-core reference machine.) SysV IPC is disabled.
  In a user namespace the server itself is pid 1 of a PID namespace owned by that user
  namespace (its parent, a small *keeper*, stays outside and stops it when the evaluator goes):
  only there may it return to its own PID namespace after creating each job's.
  Fallback: the job leads its own process group, which is SIGKILLed after the job, and
  fork/exec/kill are refused by the audit hook.
* user -- as root, jobs run under an unused uid (``UID_BASE`` + server pid, so each server has
  its own); in a user namespace, as its uid 0 (the evaluator's uid outside) with every
  capability dropped, the bounding set emptied and ``SECBIT_NOROOT`` locked, so nothing it
  executes regains one. Either way: no capabilities, ``no_new_privs`` (setuid binaries cannot
  regain root), and ``RLIMIT_NPROC`` means something (root ignores it; per-uid counting would
  otherwise mix with every other process of that uid; in a user namespace the kernel counts
  the namespace's processes apart).

The fallbacks are best effort: an audit hook runs inside the process it guards (it refuses
ctypes, the usual way around it, but is not a security boundary: C extensions get past it).
They are used only where the kernel refuses namespaces (user namespaces disabled, a seccomp
profile refusing ``unshare``), and only when asked for: a default ("auto") sandbox refuses to
start there unless the user sets ``COLLAB_ALLOW_WEAK_SANDBOX=1``; the server then says so loudly
(``Isolation.warning``, logged at start-up and carried in every result) together with what the
stronger mode needs.

Always applied to a job: RLIMIT_CPU (from the job's wall budget), RLIMIT_AS, RLIMIT_FSIZE,
RLIMIT_NOFILE, RLIMIT_CORE=0, RLIMIT_MSGQUEUE=0, stdin/stdout on /dev/null (prints are
discarded), stderr kept up to a cap, a wall-clock and an optional no-progress budget enforced
from outside with SIGKILL, and PR_SET_PDEATHSIG so a job dies with its server. The server itself
does not use PR_SET_PDEATHSIG (it fires when the *thread* that forked it exits, and evaluators
start servers from pool threads); it exits on EOF of its request pipe and polls ``getppid()``
(in a user namespace, where its ``getppid()`` is 0, its keeper polls and kills it; it dies with
the keeper by PR_SET_PDEATHSIG, the keeper being single-threaded).

Jobs run one of the *targets* defined here, called as ``target(payload, emit)`` inside the job;
``emit(obj)`` sends one JSON message back:

* ``run_calls`` -- define programs in order, each in a job of its own (or, with ``same_job``,
  all in one, each in a fresh namespace), and evaluate call expressions against them, each
  under its own time budget; return values leave the job as plain data (``encode_value``),
  never as objects the evaluator would have to trust.
* ``exec_source`` -- run a source string that may call ``report(obj)``.

Everything a job sends is untrusted: :class:`SandboxRun` carries the messages in arrival order
and callers must validate them; ``decode_value`` rebuilds a value within the bounds
``encode_value`` enforces, so a value built to be slow to rebuild or compare is refused.
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
import mmap
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

# typing.TYPE_CHECKING without importing typing into the server (each page it holds is paid for
# at every fork); annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    Emit = Callable[[Any], None]

UID_BASE = 1_500_000_000  # jobs of server N run as uid UID_BASE + N (an unused, unnamed uid)
NOBODY_UID = 65534  # used when the per-server uid is refused (e.g. inside a user namespace)
SERVER_START_TIMEOUT_S = 60.0  # a first start on a busy machine can be slow
_HEADER_DIGITS = 10  # a request header's length, in decimal digits, precedes it
_SPILL_BYTES = 1 << 16  # where a _PrivateBuffer reads bytes beyond its capacity, to drop them
ALLOW_WEAK_SANDBOX_ENV = "COLLAB_ALLOW_WEAK_SANDBOX"  # =1: run untrusted code even without kernel isolation
RESPONSE_GRACE_S = 10.0  # how much longer than a job's wall budget the evaluator waits for a server
EXIT_DRAIN_S = 1.0  # after a job exits, how long to keep reading output its leftovers may write
PARENT_POLL_S = 0.5  # how often an idle server checks that the evaluator still exists
DRAIN_INTERVAL_S = 0.05  # how often a server empties a running job's pipes (and measures a host scratch)
SCRATCH_ENTRIES = 4096  # files and directories a job's scratch may hold (the tmpfs's nr_inodes)
ENCODE_BUDGET = 100_000  # per returned value: one unit per element, one per 32 chars of text
MAX_ENCODE_DEPTH = 100
MAX_INT_BITS = 1 << 20  # larger ints are refused (in and out of the job): arithmetic on them is slow
MAX_EQUAL_HASHES = 8  # per set or dict the evaluator rebuilds (see _check_hashes)
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
# The job's scratch and working directory inside the chroot: the first that holds no Python
# directory (a venv under /tmp would otherwise be covered by the scratch tmpfs).
_SCRATCH_CANDIDATES = ("/tmp", "/var/tmp", "/scratch")
_SCRATCH_PREFIX = f"{_SERVER_ENV['TMPDIR']}/collab-sandbox-job-"  # host scratch (audit mode), + server tag
_RESULT_PIPE_BYTES = 1 << 20  # room for a whole job's messages: it never waits on the server
_EXIT_SETUP_FAILED = 121  # a job could not be set up; its stderr says why

# Linux ABI constants (include/uapi/linux/sched.h, mount.h, prctl.h, capability.h, securebits.h).
_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME, _MS_STRICTATIME = 0x400, 0x800, 0x200000, 0x1000000
_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP and SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock, and
# SECBIT_KEEP_CAPS_LOCKED: uid 0 (of a user namespace) gets no capabilities from execve.
_SECUREBITS_NO_ROOT = 0b1110_1111
_CAP_SYS_ADMIN = 21
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class SandboxError(RuntimeError):
    """The sandbox itself failed (a server would not start or answer); not the job's fault."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-job resource limits. CPU time is derived from each job's wall budget."""

    memory_bytes: int = 1 << 30  # RLIMIT_AS: address space of each job process
    max_processes: int = 16  # RLIMIT_NPROC (only where jobs get a uid or a user namespace of their own)
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
    user_isolated: bool  # jobs hold no capabilities under a uid or user namespace of their own
    user: str
    user_namespace: bool = False  # the server runs in a user namespace of its own (not root)
    warning: str = ""  # set whenever mode is "audit": what is missing and what would fix it

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
    timed_out: str | None = None  # "wall", "idle" or "scratch" (audit mode) when the server killed the job
    output_truncated: bool = False
    malformed_messages: int = 0
    stderr: str = ""
    wall_s: float = 0.0
    server_error: str | None = None  # the server died or stopped answering during this job
    jobs: int = 0  # job processes the request ran (run_calls: one per program until one fails, or one)

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
        if self.timed_out == "scratch":
            return "killed: its scratch directory outgrew the cap (SandboxLimits.scratch_bytes, SCRATCH_ENTRIES)"
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
        bits = value.bit_length()
        if bits < 10_000:
            return value
        budget[0] -= bits // 128  # as decode_value counts its hex text
        if bits > MAX_INT_BITS or budget[0] < 0:
            raise _Unencodable("value is too large to compare")
        return {"int": format(value, "x")}
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
        text = str(value)
        budget[0] -= len(text) // 32
        if budget[0] < 0:
            raise _Unencodable("value is too large to compare")
        return {"decimal": text}
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
    name, text = f"{kind.__module__}.{kind.__qualname__}", short_repr(value)
    budget[0] -= (len(name) + len(text)) // 32  # as decode_value counts them
    if budget[0] < 0:
        raise _Unencodable("value is too large to compare")
    return {"object": [name, text]}


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


class ValueTooLarge(ValueError):
    """A job's value exceeds what the evaluator rebuilds (size, depth, int size, hash collisions)."""


def decode_value(data: Any) -> Any:
    """Rebuild plain Python values from ``encode_value`` data; NaN becomes ``NAN``.

    Only builtin and stdlib value types are constructed, so comparing the result with ``==``
    runs no code from the job. The data is the job's, so it may be built to make rebuilding or
    comparing it slow; what ``encode_value`` would refuse (``ENCODE_BUDGET``, ``MAX_ENCODE_DEPTH``,
    ``MAX_INT_BITS``) and sets or dicts with more than ``MAX_EQUAL_HASHES`` keys of one hash
    (quadratic to build) raise :class:`ValueTooLarge`, so decoding and comparing stay linear.
    Raises ``ValueError``/``TypeError``/``ArithmeticError`` on data no honest job would send.
    """
    return _decode(data, [ENCODE_BUDGET], 0)


def _decode(data: Any, budget: list[int], depth: int) -> Any:
    if depth > MAX_ENCODE_DEPTH:
        raise ValueTooLarge("value is nested too deeply to compare")
    kind = type(data)
    budget[0] -= 1 + (len(data) // 32 if kind is str else 0)
    if budget[0] < 0:
        raise ValueTooLarge("value is too large to compare")
    if data is None or kind in (bool, int, str):
        return data
    if kind is float:
        return NAN if math.isnan(data) else data
    deeper = depth + 1
    if kind is list:
        return [_decode(item, budget, deeper) for item in data]
    if kind is not dict or len(data) != 1:
        raise ValueError("malformed value")
    ((tag, body),) = data.items()
    if tag in ("tuple", "set", "frozenset", "dict"):
        if type(body) is not list:
            raise ValueError("malformed value")
        if tag == "dict":
            pairs = [_pair(item) for item in body]
            keys = [_decode(k, budget, deeper) for k, _ in pairs]
            _check_hashes(keys)
            return dict(zip(keys, [_decode(v, budget, deeper) for _, v in pairs]))
        items = [_decode(item, budget, deeper) for item in body]
        if tag == "tuple":
            return tuple(items)
        _check_hashes(items)
        return set(items) if tag == "set" else frozenset(items)
    if tag in ("int", "bytes", "decimal") and type(body) is str:  # charged as encode_value does
        budget[0] -= len(body) // (64 if tag == "bytes" else 32)
        if budget[0] < 0:
            raise ValueTooLarge("value is too large to compare")
    if tag == "int":
        if len(body) > MAX_INT_BITS // 4 + 1:  # (+1: the sign)
            raise ValueTooLarge(f"an int of more than {MAX_INT_BITS} bits is too large to compare")
        return int(body, 16)
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(_number(body[0]), _number(body[1]))
    if tag == "decimal":
        return Decimal(body)
    if tag == "fraction":
        numerator, denominator = (_decode(part, budget, deeper) for part in body)
        if type(numerator) is not int or type(denominator) is not int or denominator <= 0:
            raise ValueError("malformed fraction")
        # Not Fraction(n, d): its gcd is quadratic in the ints' size. An honest job sends them in
        # lowest terms (a Fraction's own); others only fail their own comparisons.
        fraction = object.__new__(Fraction)
        fraction._numerator, fraction._denominator = numerator, denominator
        return fraction
    if tag in ("datetime", "date", "time"):
        return getattr(datetime, tag).fromisoformat(body)
    if tag == "timedelta":
        return datetime.timedelta(days=body[0], seconds=body[1], microseconds=body[2])
    if tag == "object":
        type_name, text = body
        if type(type_name) is not str or type(text) is not str:
            raise ValueError("malformed object")
        budget[0] -= (len(type_name) + len(text)) // 32
        if budget[0] < 0:
            raise ValueTooLarge("value is too large to compare")
        return Opaque(type_name, text)
    raise ValueError(f"unknown value tag {tag!r}")


def _pair(item: Any) -> tuple[Any, Any]:
    if type(item) is not list or len(item) != 2:
        raise ValueError("malformed dict item")
    return item[0], item[1]


def _number(data: Any) -> float:
    if type(data) not in (int, float):
        raise ValueError("malformed number")
    return float(data)


def _check_hashes(keys: list[Any]) -> None:
    """Refuse keys many of which share one hash: a set or dict of them takes quadratic time to
    build and to compare (each insertion probes every earlier key of that hash)."""
    counts: dict[int, int] = {}
    for key in keys:  # hashes are ints below 2**61: as keys here they do not collide themselves
        code = hash(key)
        counts[code] = counts.get(code, 0) + 1
        if counts[code] > MAX_EQUAL_HASHES:
            raise ValueTooLarge(f"more than {MAX_EQUAL_HASHES} keys of a set or dict share one hash")


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

    A later program never sees an earlier one: :meth:`Sandbox.run` gives each program a job
    process of its own (:func:`_job_payloads`), so nothing an earlier program left in memory
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
    ``simulators.colbench_scoring``), with the same messages as :func:`run_calls`.

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


_TARGETS = {"run_calls": run_calls, "exec_source": exec_source}


# --------------------------------------------------------------------------------------------
# Evaluator side
# --------------------------------------------------------------------------------------------


class Sandbox:
    """A pool of ``workers`` sandbox servers; ``run`` is thread-safe and blocks while all are busy.

    ``mode``: "auto" (every layer kernel-enforced; where the host cannot, refuse to start unless
    the user opted in with ``COLLAB_ALLOW_WEAK_SANDBOX=1``, then the strongest layers it allows),
    "namespaces" (refuse to start unless every layer is kernel-enforced) or "audit" (force the
    fallback layers, e.g. to test them).
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
        """Run ``target(payload, emit)`` (a name from ``_TARGETS``) in fresh job processes.

        ``run_calls`` runs each program in a job of its own, in order, and stops after a job that
        did not exit cleanly (with ``"same_job": true`` in the payload, all in one job); other
        targets are one job. ``wall_s`` bounds all of them together;
        ``idle_s`` (optional) bounds the time between two messages, so a job that reports per
        step is cut off early when one step hangs. The exit status, budget and output flags
        describe the last job run. Raises :class:`SandboxError` only when no server can be started.
        """
        if target not in _TARGETS:
            raise ValueError(f"unknown sandbox target {target!r} (known: {', '.join(_TARGETS)})")
        parts = [json.dumps(part).encode() for part in _job_payloads(target, payload)]
        request = {"target": target, "wall_s": wall_s, "idle_s": idle_s, "parts": [len(p) for p in parts]}
        with self._server() as server:
            try:
                header, raw, stderr = server.request(request, parts, timeout_s=wall_s + RESPONSE_GRACE_S)
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
            stderr=stderr.decode("utf-8", "replace"),
            wall_s=header["wall_s"],
            jobs=header["jobs"],
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
                if server is not None:
                    server.stop()  # (reaps it and removes what it left behind)
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
        if server.isolation.mode != "namespaces" and self.mode != "audit" and (
            self.mode == "namespaces" or not weak_sandbox_allowed()
        ):
            server.stop()
            raise SandboxError(
                f"refusing to run untrusted code here: namespace isolation is not available. "
                f"{server.isolation.warning} To run it anyway, contained only by the best-effort "
                f"layers, set {ALLOW_WEAK_SANDBOX_ENV}=1."
                if self.mode == "auto"
                else f"namespace isolation is not available here: {server.isolation.warning}"
            )
        if self._isolation is None and server.isolation.warning:  # once per pool, at start-up
            import logging

            logging.getLogger(__name__).warning("%s", server.isolation.warning)
        self._isolation = server.isolation
        return server


def weak_sandbox_allowed() -> bool:
    """Whether the user opted in to running untrusted code without kernel isolation
    (``COLLAB_ALLOW_WEAK_SANDBOX=1``): "auto" sandboxes refuse to start otherwise."""
    return os.environ.get(ALLOW_WEAK_SANDBOX_ENV, "").strip().lower() in ("1", "true", "yes")


def _stop_servers(servers: list[_ServerProcess]) -> None:
    for server in servers:
        server.stop()


def _job_payloads(target: str, payload: Any) -> list[Any]:
    """What each job of a request gets. A ``run_calls`` program shares its process with no other
    program: an answer run after the reference could otherwise read the reference's source and
    results in raw memory, which Python code can do without ctypes (numpy's array interface).
    ``same_job`` (programs that may read each other: several tasks' references) keeps one job."""
    if target == "run_calls" and not payload.get("same_job"):
        rest = {key: value for key, value in payload.items() if key != "programs"}
        return [{**rest, "programs": [program]} for program in payload["programs"]]
    return [payload]


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

        # Names this server's host scratch directories (audit mode), so that they can be removed
        # here when the server dies before it could remove them itself (SIGKILL, OOM killer).
        self._scratch_glob = f"{_SCRATCH_PREFIX}{os.urandom(6).hex()}-"
        config = {**config, "site_packages": site.getsitepackages(), "scratch_prefix": self._scratch_glob}
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

    def request(
        self, request: dict[str, Any], parts: list[bytes], *, timeout_s: float
    ) -> tuple[dict[str, Any], bytes, bytes]:
        """Send a request header and its job payloads; (response header, messages, stderr)."""
        assert self._proc.stdin is not None
        header = json.dumps(request).encode()
        try:
            # Length-prefixed: the server reads exactly the header, never a payload byte with it.
            self._proc.stdin.write(b"%0*d" % (_HEADER_DIGITS, len(header)) + header + b"".join(parts))
            self._proc.stdin.flush()
        except OSError as exc:
            raise SandboxError(f"server stopped accepting jobs ({exc})") from exc
        deadline = time.monotonic() + timeout_s
        response = json.loads(self._read_line(deadline))
        messages = self._read_exactly(response.get("message_bytes", 0), deadline)
        return response, messages, self._read_exactly(response.get("stderr_bytes", 0), deadline)

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
        import glob

        for scratch in glob.glob(glob.escape(self._scratch_glob) + "*"):  # a killed server's leftovers
            _remove_tree(scratch)


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
    try:
        server = _Server(
            SandboxLimits(**config["limits"]), config["mode"], config["site_packages"], config["scratch_prefix"]
        )
    except Exception as exc:  # report why instead of dying silently
        _write_all(1, json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        return
    _write_all(1, json.dumps({"isolation": server.isolation.to_dict()}).encode() + b"\n")
    # Every resident page is paid for at each fork (page tables) and exit: free the garbage of
    # start-up (compiling this file, building the view) and hand the heap's free pages back.
    gc.collect()
    server.libc.trim_heap()
    # Everything the server holds now is shared with every job it forks. Frozen, the jobs' garbage
    # collector never walks (and so never writes to, and copies) those objects' pages.
    gc.freeze()
    while (request := server.next_request()) is not None:
        try:
            server.answer(*request)
        except _EvaluatorGone:
            return
        del request


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

    def trim_heap(self) -> None:
        """glibc's malloc_trim(0): return free heap pages to the kernel (elsewhere: nothing)."""
        trim = getattr(self._lib, "malloc_trim", None)
        if trim is not None:
            trim(0)

    def clear_capabilities(self) -> None:
        """capset(2): empty effective, permitted and inheritable sets."""
        header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words: all zero
        self._check(self._lib.capset(header, data), "capset")


class _Server:
    """Sets up the isolation once, then forks one job per request."""

    def __init__(self, limits: SandboxLimits, mode: str, site_packages: list[str], scratch_prefix: str) -> None:
        self.limits = limits
        self.scratch_prefix = scratch_prefix  # host scratch directories (audit mode) start with it
        self.libc = _Libc()
        evaluator_uid = os.geteuid()  # (inside a user namespace we become its uid 0)
        self._pidns_fd: int | None = None
        self.scratch = _SCRATCH_CANDIDATES[0]
        self.user_ns = False
        # What the filesystem layer shows a job (and, without it, what the audit hook lets it read).
        self.readable_paths = [
            *(path for path in _VISIBLE_DIRS if os.path.isdir(path)),
            *_python_dirs(site_packages),
            *(f"/dev/{name}" for name in _VISIBLE_DEVICES),
        ]
        with open("/proc/sys/kernel/cap_last_cap") as fh:  # read while /proc is still visible
            self.cap_last = int(fh.read())
        skipped = "not attempted (audit mode requested)"
        net_note = ipc_note = pid_note = fs_note = user_ns_note = skipped
        if mode != "audit":
            if os.geteuid() == 0 and _has_capability(_CAP_SYS_ADMIN) and _in_initial_user_namespace():
                user_ns_note = ""
            else:  # an ordinary user, root without CAP_SYS_ADMIN, or root of a container's user
                # namespace (whose other uids may be unmapped): the namespaces' owner is ours
                user_ns_note = _user_namespace_refusal()
                if not user_ns_note:
                    _enter_user_namespace(self.libc)
                    self.user_ns = True
            net_note = self._try(lambda: self.libc.unshare(_CLONE_NEWNET))
            ipc_note = self._try(self._isolate_ipc)
            pid_note = self._try(self._isolate_processes)  # needs the host's /proc: before the chroot
            fs_note = self._try(lambda: self._isolate_filesystem(site_packages))
        # Only now: in a user namespace this is the server forked by the keeper, whose getppid()
        # is 0 (its parent lives outside its PID namespace) and stays 0.
        self.parent_pid = os.getppid()
        self.net_isolated, self.pid_isolated, self.fs_isolated = not net_note, not pid_note, not fs_note
        if self.user_ns:
            self.uid, user_note = None, ""
        elif os.geteuid() == 0:
            self.uid, user_note = self._choose_uid()
        else:
            self.uid, user_note = None, f"no user namespace: {user_ns_note}"
        self.user_isolated = self.user_ns or self.uid is not None
        if self.fs_isolated:
            os.environ.update(HOME=self.scratch, TMPDIR=self.scratch)  # what every job gets
            if self.uid is not None:
                os.chown(self.scratch, self.uid, self.uid)
        kernel_enforced = self.net_isolated and self.fs_isolated and self.pid_isolated and self.user_isolated
        notes = {"network": net_note, "filesystem": fs_note, "processes": pid_note}
        self.isolation = Isolation(
            mode="namespaces" if kernel_enforced else "audit",
            network_isolated=self.net_isolated,
            network="own network namespace, no interfaces up"
            if self.net_isolated
            else f"sockets refused by an audit hook (best effort); no network namespace: {net_note}",
            filesystem_isolated=self.fs_isolated,
            filesystem=f"read-only chroot of the Python installation; tmpfs scratch on {self.scratch} "
            "emptied after each job"
            if self.fs_isolated
            else "host temp dir as scratch, deleted after the job; reads outside the Python installation "
            f"and writes outside the scratch refused by an audit hook (best effort); no mount namespace: {fs_note}",
            processes_isolated=self.pid_isolated,
            processes=(
                "each job is pid 1 of its own PID namespace: all its descendants die with it"
                if self.pid_isolated
                else "process group killed after the job; fork/exec/kill refused by an audit hook "
                f"(best effort); no PID namespace: {pid_note}"
            )
            + ("; SysV IPC disabled" if not ipc_note else f"; SysV IPC shared with the host: {ipc_note}"),
            user_isolated=self.user_isolated,
            user=f"uid {self.uid} (no capabilities, no_new_privs)"
            if self.uid is not None
            else f"uid 0 of a user namespace of its own (uid {evaluator_uid} outside): no capabilities, "
            "no_new_privs"
            if self.user_ns
            else f"evaluator's uid {evaluator_uid}, no_new_privs" + (f"; {user_note}" if user_note else ""),
            user_namespace=self.user_ns,
            warning="" if kernel_enforced else _weak_isolation_warning(mode, notes, user_note),
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

    def _isolate_processes(self) -> None:
        if self.user_ns:
            self._split_off_keeper()
        self._probe_pid_namespace()

    def _split_off_keeper(self) -> None:
        """Continue as pid 1 of a PID namespace owned by our user namespace; the parent stays
        behind as the keeper (:func:`_keep`) and never returns from here.

        setns() back into a PID namespace needs CAP_SYS_ADMIN over its owner: the host's is owned
        by the initial user namespace, where we have nothing, but this one is ours.
        """
        self.libc.unshare(_CLONE_NEWPID)
        evaluator = os.getppid()
        pid = os.fork()
        if pid != 0:
            _keep(pid, evaluator)
        # The keeper is single-threaded: its death, not a thread's, fires this.
        self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def _probe_pid_namespace(self) -> None:
        # Keep a handle on our own PID namespace: after each unshare(CLONE_NEWPID) (which only
        # affects children) we setns() back so the next job can get a fresh namespace again.
        # Where setns() back is refused (no CAP_SYS_ADMIN over our namespace's owner: root of a
        # container's user namespace) the unshare could not be undone and every later fork
        # would fail: the pair is tried in a throwaway child first.
        pid = os.fork()
        if pid == 0:
            try:
                own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
                self.libc.unshare(_CLONE_NEWPID)
                self.libc.setns(own, _CLONE_NEWPID)
                os._exit(0)
            except BaseException:
                os._exit(1)
        if os.waitpid(pid, 0)[1] != 0:
            raise OSError(1, "a new PID namespace could not be left again (setns refused)")
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
        scratch = next((p for p in _SCRATCH_CANDIDATES if not _holds_any(p, python_dirs)), None)
        if scratch is None:
            raise OSError(0, f"every scratch path ({', '.join(_SCRATCH_CANDIDATES)}) holds Python files")
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
        os.makedirs(root + scratch)
        for mount_point in _mounts_under(root):
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _kept_mount_flags(mount_point)
            if not mount_point.startswith(root + "/dev/"):
                flags |= _MS_NODEV
            self.libc.mount(None, mount_point, None, flags)
        # The only writable place; mounted after the read-only pass, emptied after every job.
        options = f"size={self.limits.scratch_bytes},nr_inodes={SCRATCH_ENTRIES},mode=0700"
        self.libc.mount("tmpfs", root + scratch, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, options)
        os.chroot(root)
        os.chdir("/")
        self.scratch = scratch

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
                except BaseException:
                    os._exit(2)
                try:
                    os.listdir(os.path.dirname(os.__file__))
                    with open(os.__file__, "rb"):
                        pass
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            _, status = os.waitpid(pid, 0)
            if status == 0:
                return uid, ""
        if os.waitstatus_to_exitcode(status) == 2:
            return None, "no unprivileged uid can be taken here (unmapped in this user namespace)"
        return None, "no unprivileged uid can read the Python installation here"

    def _evaluator_gone(self) -> bool:
        # getppid(): the evaluator (or, in a user namespace, nobody: the keeper watches it there);
        # a closed response pipe: nobody is left to read our answers either way.
        return os.getppid() != self.parent_pid or _reader_gone(1)

    # -- per request ------------------------------------------------------------------------
    #
    # Memory hygiene: every job is a fork of this process, so whatever the server's heap holds
    # -- or held, since freed memory keeps its bytes -- a job could read (Python code can read raw
    # memory, e.g. through numpy's array interface). Job payloads and outputs therefore never
    # become Python objects here: they pass through _PrivateBuffer mappings that no child
    # inherits and that are unmapped after each request, and a job reads its own payload from a
    # memfd. What the server parses itself (the request header) holds only names and numbers.

    def next_request(self) -> tuple[dict[str, Any], _PrivateBuffer] | None:
        """The next request header and its payload bytes; None on EOF or when the evaluator is gone."""
        while True:
            readable = _select_read(0, PARENT_POLL_S)
            if self._evaluator_gone():
                return None
            if readable:
                break
        size = _read_fd(0, _HEADER_DIGITS)
        if size is None or not size.isdigit():
            return None  # EOF, or a stream we can no longer parse
        raw = _read_fd(0, int(size))
        if raw is None:
            return None
        try:
            request = json.loads(raw)
            parts = [int(n) for n in request["parts"]]
            if any(n < 0 for n in parts) or not parts:
                raise ValueError("bad part sizes")
        except (ValueError, TypeError, KeyError) as exc:  # the stream is out of step: stop
            _write_all(1, json.dumps({"error": f"bad request: {exc}"}).encode() + b"\n")
            return None
        payload = _PrivateBuffer(sum(parts))
        if not payload.fill_exactly(0, sum(parts)):
            payload.close()
            return None
        return request, payload

    def answer(self, request: dict[str, Any], payload: _PrivateBuffer) -> None:
        """Run the request's jobs in order, one per payload part, and write the response."""
        messages = _PrivateBuffer(self.limits.max_output_bytes)
        errors = _PrivateBuffer(self.limits.max_stderr_bytes)
        try:
            try:
                target = _TARGETS[request["target"]]
                wall_s = float(request["wall_s"])
                idle_s = None if request.get("idle_s") is None else float(request["idle_s"])
            except (KeyError, TypeError, ValueError) as exc:
                _write_all(1, json.dumps({"error": f"bad job: {type(exc).__name__}: {exc}"}).encode() + b"\n")
                return
            started = time.monotonic()
            deadline = started + wall_s
            header: dict[str, Any] = {}
            offset = jobs = 0
            for size in request["parts"]:
                with payload.view[offset : offset + size] as part:
                    header = self._run_job(target, part, deadline, idle_s, messages, errors)
                offset += size
                jobs += 1
                messages.keep_complete_lines()  # a cut-off last line is no message, nor part of the next
                clean = header["exit_code"] == 0 and not (header["timed_out"] or messages.truncated)
                if not clean:
                    break
            header.update(
                output_truncated=messages.truncated,
                wall_s=round(time.monotonic() - started, 4),
                jobs=jobs,
                message_bytes=messages.length,
                stderr_bytes=errors.length,
            )
            _write_all(1, json.dumps(header).encode() + b"\n")
            _write_all(1, messages.view[: messages.length])
            _write_all(1, errors.view[: errors.length])
        finally:
            for buffer in (payload, messages, errors):
                buffer.close()

    def _run_job(
        self,
        target: Callable[..., None],
        payload: memoryview,
        deadline: float,
        idle_s: float | None,
        messages: _PrivateBuffer,
        errors: _PrivateBuffer,
    ) -> dict[str, Any]:
        """Fork one job, watch it, clean up after it: its status (exit code, signal, timeout)."""
        scratch = self.scratch if self.fs_isolated else self._make_scratch()
        payload_fd = os.memfd_create("sandbox-job-payload")
        result_r, result_w = os.pipe()
        err_r, err_w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(result_r, fcntl.F_SETPIPE_SZ, _RESULT_PIPE_BYTES)
        try:
            _write_all(payload_fd, payload)
            os.lseek(payload_fd, 0, os.SEEK_SET)
            budget_s = max(0.0, deadline - time.monotonic())
            pid = self._fork_job(target, payload_fd, budget_s, scratch, result_w, err_w)
        finally:
            for fd in (payload_fd, result_w, err_w):
                os.close(fd)
        try:
            host_scratch = None if self.fs_isolated else scratch  # a tmpfs caps itself
            timed_out = self._watch(pid, result_r, err_r, deadline, idle_s, messages, errors, host_scratch)
            # With a PID namespace, its pid 1 (the job) is reported dead only once the kernel
            # has killed and reaped everything else in it: nothing of the job runs past this.
            _, status = os.waitpid(pid, 0)
            return {
                "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "timed_out": timed_out,
            }
        finally:
            if not self.pid_isolated:  # sweep anything left in the job's process group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            os.close(result_r)
            os.close(err_r)
            if self.fs_isolated:
                os.chmod(self.scratch, stat.S_IRWXU)  # the job owns it and may have chmod-ed it
                _empty_dir(self.scratch)
            else:
                _remove_tree(scratch)

    def _make_scratch(self) -> str:
        while True:  # mkdir never follows a planted symlink; a taken name is just retried
            scratch = f"{self.scratch_prefix}{os.urandom(6).hex()}"
            with contextlib.suppress(FileExistsError):
                os.mkdir(scratch, 0o700)
                break
        if self.uid is not None:
            os.chown(scratch, self.uid, self.uid)
        return scratch

    def _fork_job(
        self,
        target: Callable[..., None],
        payload_fd: int,
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
            self._job_main(target, payload_fd, wall_s, scratch, result_w, err_w)
        self._restore_pid_namespace()
        return pid

    def _restore_pid_namespace(self) -> None:
        if self.pid_isolated:
            assert self._pidns_fd is not None
            self.libc.setns(self._pidns_fd, _CLONE_NEWPID)

    def _watch(
        self,
        pid: int,
        result_r: int,
        err_r: int,
        deadline: float,
        idle_s: float | None,
        messages: _PrivateBuffer,
        errors: _PrivateBuffer,
        host_scratch: str | None = None,
    ) -> str | None:
        """Collect a job's output until it exits; SIGKILL it when a budget runs out. Returns
        "wall", "idle" or "scratch" (``host_scratch`` outgrew the cap) when it did.

        The server wakes up when the job exits, at a deadline, or every ``DRAIN_INTERVAL_S`` to
        empty the pipes and note progress, not once per message: on a small machine every
        wake-up is a context switch the job pays for.
        """
        idle_deadline = time.monotonic() + idle_s if idle_s is not None else math.inf
        for fd in (result_r, err_r):
            os.set_blocking(fd, False)
        timed_out: str | None = None
        pidfd = os.pidfd_open(pid)
        try:
            while True:
                now = time.monotonic()
                if self._evaluator_gone():  # so are we
                    self._kill(pid)
                    raise _EvaluatorGone
                if timed_out is None and now >= min(deadline, idle_deadline):
                    timed_out = "wall" if now >= deadline else "idle"
                    self._kill(pid)
                if timed_out is None:
                    next_check = min(deadline, idle_deadline, now + DRAIN_INTERVAL_S)
                else:  # killed: wait for the exit to show on the pidfd
                    next_check = now + PARENT_POLL_S
                exited = _select_read(pidfd, max(0.0, next_check - now))
                progressed, _ = messages.drain(result_r)
                if progressed and idle_s is not None:
                    idle_deadline = time.monotonic() + idle_s
                errors.drain(err_r)
                if exited:
                    break
                if timed_out is None and host_scratch is not None and not self._scratch_within_cap(host_scratch, pid):
                    timed_out = "scratch"
                    self._kill(pid)
        finally:
            os.close(pidfd)
        if not self.pid_isolated:  # leftovers could still hold the pipes open
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        drain_deadline = time.monotonic() + EXIT_DRAIN_S
        pending = {result_r: messages, err_r: errors}  # until end of file on each pipe
        while pending and time.monotonic() < drain_deadline:
            select.select(list(pending), [], [], max(0.0, drain_deadline - time.monotonic()))
            for fd, buffer in list(pending.items()):
                if buffer.drain(fd)[1]:
                    del pending[fd]
        return timed_out

    def _scratch_within_cap(self, scratch: str, pid: int) -> bool:
        """Whether a host scratch holds at most ``scratch_bytes`` in at most ``SCRATCH_ENTRIES``
        entries, counting files the job unlinked but keeps open. A directory the server cannot
        read (the job hid it) counts as over."""
        used, entries, directories = 0, 0, [scratch]
        try:
            while directories:
                with os.scandir(directories.pop()) as listing:
                    for entry in listing:
                        entries += 1
                        used += entry.stat(follow_symlinks=False).st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            directories.append(entry.path)
                if entries > SCRATCH_ENTRIES or used > self.limits.scratch_bytes:
                    return False
        except PermissionError:
            return False
        except FileNotFoundError:  # removed while we looked: counted at the next look
            pass
        with contextlib.suppress(OSError):  # the job may be gone (or not ours to inspect)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                path = f"/proc/{pid}/fd/{fd}"
                with contextlib.suppress(OSError):
                    target = os.readlink(path)
                    if target.startswith(scratch + "/") and target.endswith(" (deleted)"):
                        used += os.stat(path).st_blocks * 512
        return used <= self.limits.scratch_bytes

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
        payload_fd: int,
        wall_s: float,
        scratch: str,
        result_w: int,
        err_w: int,
    ) -> None:
        """The forked job process: lock itself down, run the target, never return."""
        exit_code = _EXIT_SETUP_FAILED
        try:
            # First: dup2 below may reuse its number. (Plain reads: on a fork, every object a job
            # touches costs a page copy, and file objects touch many.)
            payload = json.loads(_read_fd(payload_fd, os.fstat(payload_fd).st_size) or b"")
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
            if self.user_isolated:
                self._drop_capabilities()
            # After the uid change, which clears the parent-death signal. If the server died
            # before this line, the signal never comes; but then nobody reads our result pipe
            # any more, which poll() reports as an error on its write end.
            self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if _reader_gone(3):
                os._exit(_EXIT_SETUP_FAILED)
            if not self.fs_isolated:  # (with a filesystem namespace, set once in the server)
                os.environ.update(HOME=scratch, TMPDIR=scratch)
            if self.pid_isolated:
                sys.addaudithook(_die_of_own_signals)
            if not (self.net_isolated and self.fs_isolated and self.pid_isolated):
                guard = _AuditGuard(
                    scratch,
                    readable=self.readable_paths,
                    block_network=not self.net_isolated,
                    guard_files=not self.fs_isolated,
                    block_processes=not self.pid_isolated,
                )
                sys.addaudithook(guard)
            # sys.stdin and sys.stdout stay the server's, on fds 0 and 1, now /dev/null (the server
            # never uses them: nothing is buffered in them).
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
        if self.user_isolated:  # per-uid count: meaningful only for a uid (or user namespace) of our own
            resource.setrlimit(resource.RLIMIT_NPROC, (self.limits.max_processes, self.limits.max_processes))

    def _drop_capabilities(self) -> None:
        """No capability now, none from any execve later (setuid binaries: see no_new_privs)."""
        for capability in range(self.cap_last + 1):  # the bounding set caps what execve may grant
            self.libc.prctl(_PR_CAPBSET_DROP, capability)
        self.libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
        if self.uid is not None:  # leaving root clears the remaining sets
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)
        else:  # uid 0 of our user namespace stays: make it an ordinary uid, then empty the sets
            self.libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS_NO_ROOT)
            self.libc.clear_capabilities()


class _EvaluatorGone(Exception):
    """The evaluator died while a job ran: the job is killed, cleaned up, and the server exits."""


class _PrivateBuffer:
    """Job bytes (a payload, messages, stderr) in memory that no job ever maps.

    An anonymous mapping marked ``MADV_DONTFORK`` (absent from every process forked while it
    exists) and unmapped by ``close()``, which hands its pages back to the kernel, which zeroes
    them before any reuse. Keeps the first ``capacity`` bytes read; later ones land in a spill
    area and are dropped.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._map = mmap.mmap(-1, capacity + _SPILL_BYTES)
        self._map.madvise(mmap.MADV_DONTFORK)
        self.view = memoryview(self._map)
        self.length = 0
        self.truncated = False

    def fill_exactly(self, fd: int, size: int) -> bool:
        """Read exactly ``size`` bytes from a blocking ``fd``; False at an early end of file."""
        while self.length < size:
            count = os.readv(fd, [self.view[self.length : size]])
            if count == 0:
                return False
            self.length += count
        return True

    def drain(self, fd: int) -> tuple[bool, bool]:
        """Read what a non-blocking ``fd`` holds: (a complete line arrived, end of file)."""
        got_line = False
        while True:
            start = self.length if self.length < self.capacity else self.capacity
            end = self.capacity if self.length < self.capacity else self.capacity + _SPILL_BYTES
            try:
                count = os.readv(fd, [self.view[start:end]])
            except BlockingIOError:
                return got_line, False
            if count == 0:
                return got_line, True
            got_line = got_line or self._map.find(b"\n", start, start + count) >= 0
            if start < self.capacity:
                self.length += count
            else:
                self.truncated = True

    def keep_complete_lines(self) -> None:
        self.length = self._map.rfind(b"\n", 0, self.length) + 1

    def close(self) -> None:
        self.view.release()
        try:
            self._map.close()
        except BufferError:  # a slice of it lives on (an exception is unwinding): wipe it instead
            self._map[:] = bytes(len(self._map))


class _Emitter:
    """``emit(obj)`` inside a job: one JSON line per message on the result pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __call__(self, message: Any) -> None:
        _write_all(self._fd, (json.dumps(message, separators=(",", ":")) + "\n").encode())


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
        self,
        scratch: str,
        *,
        readable: list[str],
        block_network: bool,
        guard_files: bool,
        block_processes: bool,
    ) -> None:
        self._writable = (os.path.realpath(scratch), "/dev/null")
        # What the read-only view of the filesystem layer would show, and the scratch.
        self._readable = (*self._writable, *(os.path.realpath(path) for path in readable))
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
            if isinstance(path, (str, bytes)) and _climbs(path):
                # The kernel resolves it against a dir_fd this event does not carry (a scratch
                # directory's fd and "../.." reach past the scratch), so no check here could.
                raise PermissionError(f"sandbox: '..' in a relative path is not allowed here: {path!r}")
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & self._WRITE_FLAGS
            )
            if writing and not _within(path, self._writable):
                raise PermissionError(
                    f"sandbox: writing outside the scratch directory is not allowed: {path!r}"
                )
            if not writing and not _within(path, self._readable):
                raise PermissionError(
                    f"sandbox: reading outside the Python installation and the scratch directory is not allowed: {path!r}"
                )
            if not writing and not _within(path, self._writable) and _is_directory(path):
                # A directory fd outside scratch would let os.open(..., dir_fd=fd) -- whose audit
                # event carries no dir_fd -- create files there.
                raise PermissionError(f"sandbox: opening a directory outside the scratch is not allowed: {path!r}")
        elif event in self._PATH_EVENTS:
            for path in _paths_of(event, args):
                if not _within(path, self._writable):
                    raise PermissionError(
                        f"sandbox: changing files outside the scratch directory is not allowed: {path!r}"
                    )


# Where each path argument of an audited call is resolved from: {event: ((path index, dir_fd index), ...)}.
_DIR_FD_ARGUMENTS = {
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.mkdir": ((0, 2),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.rename": ((0, 2), (1, 3)),
    "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),),
    "shutil.rmtree": ((0, 1),),
}


def _paths_of(event: str, args: tuple[Any, ...]) -> list[Any]:
    """The paths an audited call acts on, each resolved as the kernel will: relative to its
    ``dir_fd`` when it has one (a hard link made through a directory fd would otherwise be checked
    against the working directory), a symlink's target relative to the link's directory."""
    positions = _DIR_FD_ARGUMENTS.get(event, ((0, None), (1, None)))
    paths: list[Any] = []
    for index, fd_index in positions:
        path = args[index] if index < len(args) else None
        if not isinstance(path, (str, bytes, os.PathLike)):
            continue
        path = os.fsdecode(path)
        fd = args[fd_index] if fd_index is not None and fd_index < len(args) else None
        if isinstance(fd, int) and fd >= 0 and not os.path.isabs(path):  # (-1: no dir_fd)
            path = os.path.join(os.readlink(f"/proc/self/fd/{fd}"), path)
        paths.append(path)
    if event == "os.symlink" and isinstance(args[0], (str, bytes, os.PathLike)) and paths:
        target = os.fsdecode(args[0])
        paths.append(target if os.path.isabs(target) else os.path.join(os.path.dirname(paths[0]), target))
    return paths


def _climbs(path: str | bytes) -> bool:
    """A relative path with a ``..`` component."""
    text = os.fsdecode(path)
    return not os.path.isabs(text) and ".." in text.split("/")


def _is_directory(path: Any) -> bool:
    return not isinstance(path, int) and os.path.isdir(os.fsdecode(path))


def _within(path: Any, roots: tuple[str, ...]) -> bool:
    """Whether ``path`` (once symlinks are resolved) is one of ``roots`` or lies below one."""
    if isinstance(path, int):  # an already-open descriptor
        return True
    real = os.path.realpath(os.fsdecode(path))
    return any(real == root or real.startswith(root + os.sep) for root in roots)


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
        if os.path.isdir(candidate) and not os.path.islink(candidate) and not _holds_any(candidate, needed):
            return candidate
    raise OSError(0, "no directory to build the read-only view on")


def _holds_any(directory: str, paths: list[str]) -> bool:
    return any(path == directory or path.startswith(directory + "/") for path in paths)


def _kept_mount_flags(mount_point: str) -> int:
    """The flags a read-only remount of ``mount_point`` must repeat: the kernel refuses (EPERM)
    to clear noexec, nodev or an atime setting of a mount a user namespace inherited."""
    current = os.statvfs(mount_point).f_flag
    flags = _MS_STRICTATIME if not current & (os.ST_NOATIME | os.ST_RELATIME) else 0
    for statvfs_flag, mount_flag in (
        (os.ST_NOEXEC, _MS_NOEXEC),
        (os.ST_NODEV, _MS_NODEV),
        (os.ST_NOATIME, _MS_NOATIME),
        (os.ST_NODIRATIME, _MS_NODIRATIME),
        (os.ST_RELATIME, _MS_RELATIME),
    ):
        if current & statvfs_flag:
            flags |= mount_flag
    return flags


def _has_capability(capability: int) -> bool:
    with open("/proc/self/status") as fh:
        effective = next(line.split()[1] for line in fh if line.startswith("CapEff:"))
    return bool(int(effective, 16) >> capability & 1)


def _in_initial_user_namespace() -> bool:
    """Whether this process lives in the host's user namespace (its uid map is the identity on
    every uid), not in a container's, where root's capabilities end at the container."""
    try:
        with open("/proc/self/uid_map") as fh:
            return fh.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def _user_namespace_refusal() -> str:
    """'' when this process may create a user namespace and map its uid in it, else why not.

    Tried in a throwaway child first: a half-set-up user namespace (created, uid unmapped) could
    not be left again.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            _enter_user_namespace(_Libc())
            os._exit(0)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                os.write(write_end, str(exc).encode()[:500])
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        why = reader.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if status == 0:
        return ""
    return f"user namespaces refused: {why or f'probe exited with status {status}'}"


def _enter_user_namespace(libc: _Libc) -> None:
    """Become uid 0 of a fresh user namespace, mapped to our own uid (and gid) outside.

    Inside it we hold every capability over the namespaces we create from now on, and none over
    anything else; uid 0 is the one an IPC namespace's sysctls accept writes from.
    """
    uid, gid = os.geteuid(), os.getegid()
    libc.unshare(_CLONE_NEWUSER)
    # setgroups must be denied before an unprivileged process may write its gid_map.
    maps = {"setgroups": "deny", "uid_map": f"0 {uid} 1\n", "gid_map": f"0 {gid} 1\n"}
    for name, text in maps.items():
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)


def _keep(server: int, evaluator: int) -> None:
    """The keeper: outside the server's PID namespace, it can still see the evaluator go (the
    server's getppid() is 0 there) and then kills the server, which takes its whole namespace
    -- every job -- with it. Exits with the server's status; never returns."""
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):  # the evaluator sees EOF when the server alone closes the pipes
        os.dup2(devnull, fd)
    os.close(devnull)
    pidfd = os.pidfd_open(server)
    while not _select_read(pidfd, PARENT_POLL_S):
        if os.getppid() != evaluator:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
            break
    _, status = os.waitpid(server, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _weak_isolation_warning(mode: str, missing: dict[str, str], user_note: str) -> str:
    """The loud line for a server that could not get every kernel layer."""
    if mode == "audit":
        cause = "audit mode was requested"
    else:
        missing = {**missing, "user": user_note}
        cause = "; ".join(f"no {layer} isolation: {why}" for layer, why in missing.items() if why)
    return (
        f"SANDBOX WARNING: untrusted code is NOT kernel-isolated on this host ({cause}). It is "
        "contained only by best-effort audit hooks, which code can get past (ctypes tricks, C "
        "extensions). For namespace isolation run the evaluator as root, or as any user on a kernel "
        "that allows unprivileged user namespaces: sysctl user.max_user_namespaces > 0, "
        "kernel.unprivileged_userns_clone=1 (Debian/Ubuntu kernels), "
        "kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu 23.10+); in a container, a seccomp "
        "profile that allows unshare(CLONE_NEWUSER) and mount."
    )


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


def _read_fd(fd: int, size: int) -> bytes | None:
    """Exactly ``size`` bytes from a blocking ``fd``; None at an early end of file."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
    "ValueTooLarge",
    "decode_value",
    "encode_value",
    "exec_source",
    "run_calls",
    "short_repr",
]
