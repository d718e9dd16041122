"""The kernel layers a server sets up once: libc calls Python lacks, the user, PID, IPC and mount
namespaces, and the read-only view of the filesystem a job is chrooted into. Each step raises
``OSError`` where the host refuses it; the server (:mod:`.server`) then falls back to the audit
hooks (:mod:`.audit`) for that layer and says so in its :class:`~.types.Isolation`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys

from .scratch import SCRATCH_ENTRIES

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
# What a job may see besides the Python installation itself.
_VISIBLE_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_VISIBLE_DEVICES = ("null", "zero", "full", "random", "urandom")
# The job's scratch and working directory inside the chroot: the first that holds no Python
# directory (a venv under /tmp would otherwise be covered by the scratch tmpfs).
_SCRATCH_CANDIDATES = ("/tmp", "/var/tmp", "/scratch")


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


def _disable_sysv_ipc(libc: _Libc) -> None:
    # A fresh IPC namespace per *job* costs ~6 ms to tear down; instead the server gets one
    # and sets its namespaced limits to zero, so no job can create SysV objects at all (they
    # would otherwise outlive the job and be visible to the next one).
    libc.unshare(_CLONE_NEWIPC)
    for name, value in (("shmmni", "0"), ("msgmni", "0"), ("sem", "0 0 0 0")):
        with open(f"/proc/sys/kernel/{name}", "w") as fh:
            fh.write(value)


def _own_pid_namespace_handle(libc: _Libc) -> int:
    """A handle on our own PID namespace: after each unshare(CLONE_NEWPID) (which only affects
    children) the server setns() back so the next job can get a fresh namespace again.

    Where setns() back is refused (no CAP_SYS_ADMIN over our namespace's owner: root of a
    container's user namespace) the unshare could not be undone and every later fork would
    fail: the pair is tried in a throwaway child first.
    """
    pid = os.fork()
    if pid == 0:
        try:
            own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            libc.unshare(_CLONE_NEWPID)
            libc.setns(own, _CLONE_NEWPID)
            os._exit(0)
        except BaseException:
            os._exit(1)
    if os.waitpid(pid, 0)[1] != 0:
        raise OSError(1, "a new PID namespace could not be left again (setns refused)")
    fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.unshare(_CLONE_NEWPID)
        libc.setns(fd, _CLONE_NEWPID)
    except OSError:
        os.close(fd)
        raise
    return fd


def _chroot_into_read_only_view(libc: _Libc, site_packages: list[str], scratch_bytes: int) -> str:
    """Private mount namespace, then chroot into a read-only view of what Python needs.

    The view is a tmpfs mounted, inside our namespace only, on a directory we do not need
    (so nothing is ever created on, or left behind on, the host). Returns the path, inside the
    view, of the job's scratch.
    """
    libc.unshare(_CLONE_NEWNS)
    libc.mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount leaks to the host
    python_dirs = sorted(_python_dirs(site_packages), key=len)
    root = _unneeded_directory([*_VISIBLE_DIRS, *python_dirs, "/dev"])
    scratch = next((p for p in _SCRATCH_CANDIDATES if not _holds_any(p, python_dirs)), None)
    if scratch is None:
        raise OSError(0, f"every scratch path ({', '.join(_SCRATCH_CANDIDATES)}) holds Python files")
    libc.mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
    bound: list[str] = []
    for path in _VISIBLE_DIRS:
        if os.path.islink(path):  # /bin -> usr/bin on merged-/usr systems
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            _bind(libc, path, root)
            bound.append(path)
    for path in python_dirs:  # a venv inside the repository: only the venv becomes visible
        if not any(path == d or path.startswith(d + "/") for d in bound):
            _bind(libc, path, root)
            bound.append(path)
    os.makedirs(root + "/dev")
    for name in _VISIBLE_DEVICES:
        if os.path.exists(f"/dev/{name}"):
            with open(f"{root}/dev/{name}", "w"):
                pass
            libc.mount(f"/dev/{name}", f"{root}/dev/{name}", None, _MS_BIND)
    os.makedirs(root + scratch)
    for mount_point in _mounts_under(root):
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _kept_mount_flags(mount_point)
        if not mount_point.startswith(root + "/dev/"):
            flags |= _MS_NODEV
        libc.mount(None, mount_point, None, flags)
    # The only writable place; mounted after the read-only pass, emptied after every job.
    options = f"size={scratch_bytes},nr_inodes={SCRATCH_ENTRIES},mode=0700"
    libc.mount("tmpfs", root + scratch, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, options)
    os.chroot(root)
    os.chdir("/")
    return scratch


def _bind(libc: _Libc, path: str, root: str) -> None:
    os.makedirs(root + path, exist_ok=True)
    libc.mount(path, root + path, None, _MS_BIND | _MS_REC)


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
