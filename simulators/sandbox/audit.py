"""The audit hooks a job runs under (``sys.addaudithook``, installed by the job itself).

* :class:`_AuditGuard` -- the fallback layers, where the kernel refused a namespace: sockets,
  writes outside the scratch, reads outside the Python installation, fork/exec/kill. Best
  effort: a hook runs inside the process it guards and refuses ctypes, the usual way around
  it, but C extensions get past it. It is not a security boundary.
* :func:`_die_of_own_signals` -- with a PID namespace, the normal outcome of signalling
  oneself: the kernel shields a namespace's pid 1 (the job) from such signals.
"""

from __future__ import annotations

import os
import signal

# typing.TYPE_CHECKING without importing typing into the server (each page it holds is paid for
# at every fork); annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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
