"""Evaluator side: :class:`Sandbox`, a pool of server processes, and how one is started.

Runs in the evaluator's process, never in a server: what only this side needs (threads,
queues, ``subprocess``, ``site``, ``logging``) is imported where it is used, so that loading
the package keeps the server's heap lean.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict

from .fds import _HEADER_DIGITS, _select_read
from .job import _TARGETS
from .scratch import _remove_tree
from .types import Isolation, SandboxError, SandboxLimits, SandboxRun

# typing.TYPE_CHECKING without importing typing into the server (each page it holds is paid for
# at every fork); annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

SERVER_START_TIMEOUT_S = 60.0  # a first start on a busy machine can be slow
ALLOW_WEAK_SANDBOX_ENV = "COLLAB_ALLOW_WEAK_SANDBOX"  # =1: run untrusted code even without kernel isolation
RESPONSE_GRACE_S = 10.0  # how much longer than a job's wall budget the evaluator waits for a server

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# A server is server.py and the sibling modules it imports, loaded by path under their usual
# names: not the `simulators` package (its __init__ imports the rest of the project), nor this
# package's __init__ (its re-exports bring the evaluator side along), which is registered but not
# run. '' (cwd) leaves sys.path first.
_BOOTSTRAP = (
    "import importlib, importlib.util, sys; del sys.path[0]; package = sys.argv.pop(1); "
    "spec = importlib.util.spec_from_file_location('simulators.sandbox', package + '/__init__.py', "
    "submodule_search_locations=[package]); "
    "sys.modules[spec.name] = importlib.util.module_from_spec(spec); "
    "importlib.import_module('simulators.sandbox.server').serve()"
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
_SCRATCH_PREFIX = f"{_SERVER_ENV['TMPDIR']}/collab-sandbox-job-"  # host scratch (audit mode), + server tag


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

            logging.getLogger(__package__).warning("%s", server.isolation.warning)  # "simulators.sandbox"
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
                [sys.executable, "-S", "-c", _BOOTSTRAP, _PACKAGE_DIR, json.dumps(config)],
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
