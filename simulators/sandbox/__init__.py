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
server loads this package's server side alone, by path (``pool._BOOTSTRAP``) -- not the
``simulators`` package, whose ``__init__`` imports the rest of the project -- and sets up the
isolation once; every job is then a ``fork`` of that small, initialised interpreter instead of
a 15-80 ms interpreter start. So the package imports nothing of the project (an import-linter
contract in pyproject.toml) and its modules import each other relatively. On a VM every page a
process maps is paid for at fork, on write and at exit, so the server's heap is kept lean:
modules only the evaluator side needs are imported where they are used, not at the top of a
module, and the evaluator side (``pool``, this ``__init__``) is never loaded into a server.

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

Jobs run one of the *targets* of :mod:`.job` (``run_calls``, ``exec_source``), called as
``target(payload, emit)``. Everything a job sends is untrusted: :class:`SandboxRun` carries the
messages in arrival order and callers must validate them; ``decode_value`` rebuilds a value
within the bounds ``encode_value`` enforces (:mod:`.codec`).

What lives where (the evaluator imports ``types``, ``codec``, ``job``, ``fds``, ``scratch`` and
``pool`` through this ``__init__``; a server loads ``server`` and what it imports: all but
``pool`` and this ``__init__``)::

    types.py       what callers pass and get back: SandboxLimits, Isolation, SandboxRun, SandboxError
    codec.py       return values as plain data: encode_value in the job, decode_value in the evaluator
    pool.py        evaluator side: Sandbox, its server processes, how a server is started
    server.py      server side: serve(), the isolation set-up, the per-job fork and watch, the keeper
    namespaces.py  the kernel layers: libc calls, user/PID/IPC/mount namespaces, the read-only view
    audit.py       the audit hooks a job runs under: the best-effort fallback layers, pid 1's signals
    job.py         job side: the targets and the harness around each program and call
    scratch.py     a job's scratch directory: made, measured, emptied, removed
    fds.py         pipes and file descriptors: exact reads and writes, private buffers for job bytes

Anything in the project may import this package's public names (``__all__``, re-exported here);
the package itself imports only the standard library.
"""

from .codec import (
    MAX_INT_BITS,
    NAN,
    Opaque,
    ValueTooLarge,
    decode_value,
    encode_value,
    short_repr,
)
from .job import ERROR_CHARS, exec_source, run_calls
from .pool import Sandbox
from .types import Isolation, SandboxError, SandboxLimits, SandboxRun

__all__ = [
    "ERROR_CHARS",
    "MAX_INT_BITS",
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
