"""Server side: the process a :class:`~.pool.Sandbox` worker talks to, and the jobs it forks.

:func:`serve` is the entry point (``pool._BOOTSTRAP`` loads this module by path and calls it).
:class:`_Server` sets up the isolation once (:mod:`.namespaces`; the audit hooks of
:mod:`.audit` where the kernel refuses a layer), then, per request, forks one job per payload
part, watches it under its budgets, collects its output and cleans up after it. In a user
namespace the server runs below a small *keeper* (:func:`_keep`) that stops it when the
evaluator goes. Everything here and everything it imports is in every job's memory: keep it
lean (see the package docstring).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import math
import os
import resource
import select
import signal
import stat
import sys
import time

from .audit import _AuditGuard, _die_of_own_signals
from .fds import _HEADER_DIGITS, _max_fd, _PrivateBuffer, _read_fd, _reader_gone, _select_read, _write_all
from .job import _TARGETS, _Emitter
from .namespaces import (
    _CAP_SYS_ADMIN,
    _CLONE_NEWNET,
    _CLONE_NEWPID,
    _PR_CAP_AMBIENT,
    _PR_CAP_AMBIENT_CLEAR_ALL,
    _PR_CAPBSET_DROP,
    _PR_SET_NO_NEW_PRIVS,
    _PR_SET_PDEATHSIG,
    _PR_SET_SECUREBITS,
    _SCRATCH_CANDIDATES,
    _SECUREBITS_NO_ROOT,
    _VISIBLE_DEVICES,
    _VISIBLE_DIRS,
    _chroot_into_read_only_view,
    _disable_sysv_ipc,
    _enter_user_namespace,
    _has_capability,
    _in_initial_user_namespace,
    _Libc,
    _own_pid_namespace_handle,
    _python_dirs,
    _user_namespace_refusal,
)
from .scratch import _empty_dir, _host_scratch_within_cap, _make_host_scratch, _remove_tree
from .types import Isolation, SandboxLimits

# typing.TYPE_CHECKING without importing typing into the server (each page it holds is paid for
# at every fork); annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

UID_BASE = 1_500_000_000  # jobs of server N run as uid UID_BASE + N (an unused, unnamed uid)
NOBODY_UID = 65534  # used when the per-server uid is refused (e.g. inside a user namespace)
EXIT_DRAIN_S = 1.0  # after a job exits, how long to keep reading output its leftovers may write
PARENT_POLL_S = 0.5  # how often an idle server checks that the evaluator still exists
DRAIN_INTERVAL_S = 0.05  # how often a server empties a running job's pipes (and measures a host scratch)
_RESULT_PIPE_BYTES = 1 << 20  # room for a whole job's messages: it never waits on the server
_EXIT_SETUP_FAILED = 121  # a job could not be set up; its stderr says why


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
    # start-up (compiling these modules, building the view) and hand the heap's free pages back.
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
            ipc_note = self._try(lambda: _disable_sysv_ipc(self.libc))
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

    def _isolate_processes(self) -> None:
        if self.user_ns:
            self._split_off_keeper()
        self._pidns_fd = _own_pid_namespace_handle(self.libc)

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

    def _isolate_filesystem(self, site_packages: list[str]) -> None:
        self.scratch = _chroot_into_read_only_view(self.libc, site_packages, self.limits.scratch_bytes)

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
        scratch = self.scratch if self.fs_isolated else _make_host_scratch(self.scratch_prefix, self.uid)
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
                if (
                    timed_out is None
                    and host_scratch is not None
                    and not _host_scratch_within_cap(host_scratch, pid, self.limits.scratch_bytes)
                ):
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
