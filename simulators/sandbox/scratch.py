"""A job's scratch, its working directory and only writable place: with a mount namespace, a
size-capped tmpfs the server empties after each job (``namespaces._chroot_into_read_only_view``
mounts it); without one, a fresh host directory per job, measured while the job runs and
removed after it (or by the evaluator, when the server was killed first)."""

from __future__ import annotations

import contextlib
import os
import stat

SCRATCH_ENTRIES = 4096  # files and directories a job's scratch may hold (the tmpfs's nr_inodes)


def _make_host_scratch(prefix: str, uid: int | None) -> str:
    """A fresh host directory for one job (audit mode), owned by the job's ``uid`` when it has one."""
    while True:  # mkdir never follows a planted symlink; a taken name is just retried
        scratch = f"{prefix}{os.urandom(6).hex()}"
        with contextlib.suppress(FileExistsError):
            os.mkdir(scratch, 0o700)
            break
    if uid is not None:
        os.chown(scratch, uid, uid)
    return scratch


def _host_scratch_within_cap(scratch: str, pid: int, scratch_bytes: int) -> bool:
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
            if entries > SCRATCH_ENTRIES or used > scratch_bytes:
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
    return used <= scratch_bytes


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
