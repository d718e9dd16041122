"""What callers hand the sandbox and get back: limits in; the isolation report, each job's run
and the sandbox's own failure out."""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass

# typing.TYPE_CHECKING without importing typing into the server (each page it holds is paid for
# at every fork); annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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
