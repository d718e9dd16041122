"""Regression guards for the escapes of issue 17, each tried as a hostile answer would: model-written
code run through the evaluator (or, where the outcome needs a report, straight in the sandbox).

Attacks that only the kernel can stop (another process's memory, root's files, signals, leftover
processes, the network) run against a kernel-isolated sandbox and skip where the host allows
none; the audit fallback is best effort by design (see ``simulators/sandbox/``). The others run
in both isolation modes. As root, tests/test_sandbox.py re-runs this file as an ordinary user.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import site
import socket
import sqlite3
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from test_sandbox import MEMORY_LIMIT, descendants_of, gone, run, sandbox_processes, server_pids
from test_scoring_backend import double_task, failed

from simulators.sandbox import MAX_INT_BITS, Sandbox, SandboxError, SandboxLimits
from simulators.scoring.backend import BackendEvaluator


@pytest.fixture(scope="module")
def kernel_evaluator():
    """The evaluator with every layer kernel-enforced, or a skip where this host allows none."""
    try:
        with BackendEvaluator(workers=1, per_test_timeout_s=5.0, load_timeout_s=5.0, mode="namespaces") as ev:
            ev.sandbox.isolation  # noqa: B018 (starts a server, or raises)
            yield ev
    except SandboxError as exc:
        pytest.skip(f"no kernel isolation on this host: {exc}")


@pytest.fixture(scope="module", params=["auto", "audit"])
def evaluator(request):
    # Generous per-call budgets: forging several MB of output must finish well within them.
    with BackendEvaluator(workers=1, per_test_timeout_s=5.0, load_timeout_s=5.0, mode=request.param) as ev:
        yield ev


def hostile_on_3(code: str) -> str:
    """An answer to ``double_task`` whose call ``double(3)`` (test4) runs ``code`` first."""
    return f"import ctypes, os, signal, socket, sys\ndef double(x):\n    if x == 3:\n{textwrap.indent(code, ' ' * 8)}\n    return 2 * x\n"


def assert_only_test4_fails(evaluator: BackendEvaluator, code: str, *, task_id: str = "double") -> str:
    result = evaluator.evaluate(double_task(task_id), hostile_on_3(code))
    assert failed(result) == ["test4"], result.tests
    return result.tests[3].error or ""


# -- 5: the evaluator decodes job output within bounds -----------------------------------------------

COLLIDING = (1 << 61) - 1  # int hashes are taken modulo this: its multiples all hash to 0
HOSTILE_VALUES = {
    # Each is forged on the result pipe (so no in-job encoding limit applies) as test4's outcome.
    "250,000 ints of one hash": f"{{'set': [{COLLIDING} * k for k in range(1, 250_001)]}}",
    "a Fraction of 11-million-bit ints": "{'fraction': [{'int': 'f' * 2_750_000}, {'int': 'e' * 2_750_000}]}",
    "containers nested 900 deep": "json.loads('[' * 900 + ']' * 900)",
    "a 7 MB string": "'x' * (7 << 20)",
}


@pytest.mark.parametrize("value", list(HOSTILE_VALUES))
def test_output_built_to_be_slow_to_decode_is_a_failed_test(evaluator, value):
    """Class 5: decode_value is bounded; a value over the bounds is refused, fast, with a reason."""
    forge = (
        f"import json\nvalue = {HOSTILE_VALUES[value]}\n"
        "os.write(3, json.dumps({'kind': 'call', 'program': 'answer', 'name': 'test4', 'value': value, "
        "'repr': '?'}).encode() + b'\\n')"
    )
    started = time.monotonic()
    error = assert_only_test4_fails(evaluator, forge, task_id=f"decode-{uuid.uuid4().hex}")
    assert error.startswith("the returned value was refused: "), error
    assert time.monotonic() - started < 30  # it used to take minutes


def test_the_largest_values_an_honest_job_returns_still_decode(evaluator):
    big = f"return 1 << {MAX_INT_BITS - 1}"
    result = evaluator.evaluate(double_task(), hostile_on_3(big))
    assert failed(result) == ["test4"] and result.tests[3].error is None  # decoded, compared: unequal
    too_big = f"return 1 << {MAX_INT_BITS + 1}"
    result = evaluator.evaluate(double_task(), hostile_on_3(too_big))
    assert "too large to compare" in result.tests[3].error


# -- 1: memory, command lines and environments of other processes ------------------------------------

SECRET = b"collab-secret-" + uuid.uuid4().hex.encode()


def memory_attacks() -> dict[str, str]:
    evaluator, address = os.getpid(), id(SECRET)
    read_vm = (
        "class IoVec(ctypes.Structure):\n"
        "    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        f"buffer = ctypes.create_string_buffer({len(SECRET) + 64})\n"
        f"local, remote = IoVec(ctypes.addressof(buffer), {len(SECRET) + 64}), IoVec({address}, {len(SECRET) + 64})\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
    )
    return {
        "process_vm_readv of the evaluator": read_vm
        + f"assert libc.process_vm_readv({evaluator}, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) > 0\n"
        f"assert {SECRET!r} in buffer.raw",
        "process_vm_writev into the evaluator": read_vm
        + f"assert libc.process_vm_writev({evaluator}, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) > 0",
        "/proc/PID/mem of the evaluator": f"with open('/proc/{evaluator}/mem', 'rb') as fh:\n"
        f"    fh.seek({address})\n    assert {SECRET!r} in fh.read(200)",
        "/proc/PID/mem of its server": "with open(f'/proc/{os.getppid() or 1}/mem', 'r+b') as fh:\n    pass",
        "the evaluator's environment": f"assert open('/proc/{evaluator}/environ', 'rb').read()",
        "the server's command line": "assert open('/proc/self/cmdline', 'rb').read()",
        "the repository, found from the sandbox module's path": (
            "repo = os.path.dirname(os.path.dirname(os.path.dirname(sys.modules['simulators.sandbox'].__file__)))\n"
            "assert os.listdir(os.path.join(repo, 'assets'))"
        ),
        "the repository, found from the server's arguments": (
            "paths = [p for p in json.loads(sys.argv[-1])['site_packages']]\n"
            "repo = paths[0].split('/.venv')[0]\n"
            "assert 'simulators' in os.listdir(repo)"
        ).replace("json.loads", "__import__('json').loads"),
    }


@pytest.mark.parametrize("attack", list(memory_attacks()))
def test_an_answer_reaches_no_other_process_memory_nor_the_repository(kernel_evaluator, attack):
    """Class 1: each passes test4 only if the escape works."""
    assert_only_test4_fails(kernel_evaluator, memory_attacks()[attack])


@pytest.mark.parametrize("mode", ["auto", "audit"])
def test_the_evaluators_environment_never_reaches_a_job(mode):
    os.environ["COLLAB_ATTACK_CANARY"] = "leaked"
    try:
        with Sandbox(workers=1, limits=SandboxLimits(memory_bytes=MEMORY_LIMIT), mode=mode) as fresh:
            result = run(fresh, "import os; report(dict(os.environ))")
    finally:
        del os.environ["COLLAB_ATTACK_CANARY"]
    (environment,) = result.messages
    assert "COLLAB_ATTACK_CANARY" not in environment
    assert set(environment) <= {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"} | {
        "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"
    }  # fmt: skip


# -- 2: what root (or the evaluator's user) can reach --------------------------------------------------


@pytest.fixture(scope="module")
def unix_listeners():
    """A unix socket in the host's /tmp and an abstract one, both listening."""
    tag = uuid.uuid4().hex
    path, abstract = f"/tmp/collab-attack-{tag}.sock", f"\0collab-attack-{tag}"
    sockets = []
    for address in (path, abstract):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(address)
        listener.listen()
        listener.settimeout(0.1)
        sockets.append(listener)
    yield path, abstract, sockets
    for listener in sockets:
        listener.close()
    os.unlink(path)


def host_reach_attacks(database: Path, tag: str, unix_path: str, unix_abstract: str) -> dict[str, str]:
    host_file = f"/tmp/collab-attack-{tag}"
    return {
        "read /etc/shadow": "assert open('/etc/shadow').read()",
        "read the app's SQLite file": f"import sqlite3\nassert sqlite3.connect({str(database)!r}).execute('select * from scores').fetchall()",
        "create a file in the host /tmp with a dir fd": (
            "fd = os.open('/tmp', os.O_RDONLY)\n"
            f"os.close(os.open({os.path.basename(host_file)!r}, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))\n"
            f"assert os.path.exists({host_file!r}) and os.getcwd() != '/tmp'"
        ),
        "create a file in the host /tmp with sqlite3": f"import sqlite3\nsqlite3.connect({host_file + '.db'!r}).execute('create table t (x)')\nassert os.getcwd() != '/tmp'",
        "create a file after patching the audit hook away": (
            "sys.modules['sys'].addaudithook = lambda hook: None\n"
            f"assert ctypes.CDLL(None).open({host_file.encode()!r}, 0o101, 0o644) >= 0 and os.getcwd() != '/tmp'"
        ),
        "connect to a unix socket in /tmp": f"socket.socket(socket.AF_UNIX).connect({unix_path!r})",
        "connect to an abstract unix socket": f"socket.socket(socket.AF_UNIX).connect({unix_abstract!r})",
        "fork past the process limit": (
            "children = []\n"
            "for _ in range(30):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        __import__('time').sleep(60)\n"
            "    children.append(pid)\n"
            "assert len(children) == 30"
        ),
    }


def test_an_answer_reaches_no_file_socket_or_process_count_beyond_its_own(
    kernel_evaluator, unix_listeners, tmp_path
):
    """Class 2 (root jobs are not root; an ordinary user's jobs are no more than it): each passes
    test4 only if the escape works, and nothing lands on the host."""
    unix_path, unix_abstract, listeners = unix_listeners
    database = tmp_path / "collab.sqlite"
    with sqlite3.connect(database) as connection:
        connection.execute("create table scores (line text)")
        connection.execute("insert into scores values ('secret')")
    connection.close()
    database.chmod(0o644)  # even readable by anyone: the job does not see it
    tag = uuid.uuid4().hex
    before = sandbox_processes()
    for name, code in host_reach_attacks(database, tag, unix_path, unix_abstract).items():
        error = assert_only_test4_fails(kernel_evaluator, code, task_id=f"reach-{uuid.uuid4().hex}")
        assert error, name
    assert not list(Path("/tmp").glob(f"collab-attack-{tag}*"))
    for listener in listeners:
        with pytest.raises(TimeoutError):
            listener.accept()
    assert sandbox_processes() == before
    assert sqlite3.connect(database).execute("select * from scores").fetchall() == [("secret",)]


# -- 3: signals, leftover processes, the network ---------------------------------------------------


def process_and_network_attacks(evaluator_pid: int, listener_port: int) -> dict[str, str]:
    return {
        "kill(-1, SIGKILL)": "os.kill(-1, signal.SIGKILL)\nassert False, 'alive'",
        "signal the evaluator": f"os.kill({evaluator_pid}, 0)",
        "signal the evaluator through libc": f"assert ctypes.CDLL(None).kill({evaluator_pid}, 0) == 0",
        "kill its own server": "os.kill(os.getppid(), signal.SIGKILL)",
        "leave a process running (fork_exec)": (
            "import subprocess\n"
            "subprocess.Popen(['/bin/sleep', '3600'], start_new_session=True)\n"
            "if os.fork() == 0:\n    os.setsid()\n    __import__('time').sleep(3600)\n"
            "assert False, 'left them running'"
        ),
        "connect to a loopback TCP listener": f"socket.create_connection(('127.0.0.1', {listener_port}), timeout=1)",
        "resolve an attacker-chosen name": f"socket.getaddrinfo('{uuid.uuid4().hex}.attacker.example', 80)",
    }


def test_an_answer_signals_nothing_leaves_nothing_and_reaches_no_network(kernel_evaluator):
    """Class 3: each attack fails its own test; the evaluator, its server and the host survive."""
    assert kernel_evaluator.evaluate(double_task(), "def double(x):\n    return 2 * x").tests_passed == 1.0
    servers = server_pids(os.getpid())
    before = sandbox_processes()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)
        for name, code in process_and_network_attacks(os.getpid(), listener.getsockname()[1]).items():
            error = assert_only_test4_fails(kernel_evaluator, code, task_id=f"signal-{uuid.uuid4().hex}")
            assert error, name
            assert not any(gone(server) for server in servers), name
        with pytest.raises(TimeoutError):
            listener.accept()
    assert sandbox_processes() == before  # nothing left running, the server untouched


# -- 4: hard links out of scratch ------------------------------------------------------------------


LINK_FROM_A_DIR_FD = {
    # The directory fd is on the victim's directory.
    "outside": "fd = os.open({directory!r}, os.O_RDONLY)\nos.link({name!r}, 'linked', src_dir_fd=fd)\n",
    # On a directory inside scratch, and '..' leads out -- from there, not from the (deeper) cwd.
    "inside, with ..": (
        "depth = os.getcwd().count('/')\n"
        "os.makedirs('a/' + '/'.join(['d'] * depth))\n"
        "fd = os.open('a', os.O_RDONLY)\n"
        "os.chdir('a/' + '/'.join(['d'] * depth))\n"
        "os.link('../' * (depth + 1) + {victim!r}.lstrip('/'), os.path.join(os.environ['HOME'], 'linked'), src_dir_fd=fd)\n"
        "os.chdir(os.environ['HOME'])\n"
    ),
}


@pytest.mark.parametrize("dir_fd", list(LINK_FROM_A_DIR_FD))
def test_a_hard_link_through_a_dir_fd_writes_nothing_outside_scratch(evaluator, tmp_path, dir_fd):
    """Class 4: a link to a file outside scratch, made relative to a directory fd, then appended to.
    Where it can, the victim sits in site-packages, which even the audit fallback lets a
    job read (so open a directory fd on)."""
    readable = [Path(path) for path in site.getsitepackages() if os.access(path, os.W_OK)]
    directory = (readable or [tmp_path])[0]
    victim = directory / f"collab-victim-{uuid.uuid4().hex}"
    victim.write_text("original")
    victim.chmod(0o666)  # writable by anyone: only the sandbox stands in the way
    try:
        link = LINK_FROM_A_DIR_FD[dir_fd].format(
            directory=str(directory), name=victim.name, victim=str(victim)
        )
        code = link + "with open('linked', 'a') as fh:\n    fh.write('escaped')"
        error = assert_only_test4_fails(evaluator, code + "\nassert False, 'wrote it'")
        assert "wrote it" not in error, error
        assert victim.read_text() == "original"
    finally:
        victim.unlink()


def test_a_file_created_through_a_dir_fd_lands_nowhere_outside_scratch(evaluator, tmp_path):
    """Class 2/4: ``os.open(name, O_CREAT, dir_fd=fd)`` -- whose audit event carries no dir_fd --
    into a directory anyone may write, inside what even the audit fallback lets a job read."""
    writable = [Path(path) for path in site.getsitepackages() if os.access(path, os.W_OK)]
    directory = (writable or [tmp_path])[0] / f"collab-open-dir-{uuid.uuid4().hex}"
    directory.mkdir()
    directory.chmod(0o777)
    try:
        code = (
            f"fd = os.open({str(directory)!r}, os.O_RDONLY)\n"
            "os.close(os.open('planted', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))\n"
            "assert False, 'created it'"
        )
        error = assert_only_test4_fails(evaluator, code)
        assert "created it" not in error, error
        assert list(directory.iterdir()) == []
    finally:
        shutil.rmtree(directory)


def test_a_file_created_through_a_scratch_dir_fd_and_dot_dot_lands_nowhere_outside_scratch(evaluator):
    """Class 2/4: a directory fd on the scratch itself (which the audit fallback allows), the
    working directory deep inside it, then ``os.open("../../...", dir_fd=fd)``: checked against the
    working directory the path stays in scratch; the kernel resolves it from the fd, outside."""
    directory = Path(tempfile.mkdtemp(prefix="collab-open-to-anyone-", dir="/tmp"))  # any uid can reach it
    directory.chmod(0o777)
    code = (
        "depth = len(os.getcwd().strip('/').split('/'))\n"
        "fd = os.open('.', os.O_RDONLY)\n"
        "os.makedirs('/'.join(['d'] * depth))\n"
        "os.chdir('/'.join(['d'] * depth))\n"
        f"os.close(os.open('../' * depth + {str(directory).lstrip('/')!r} + '/planted', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))\n"
        "assert False, 'created it'"
    )
    try:
        error = assert_only_test4_fails(evaluator, code)
        assert "created it" not in error, error
        assert list(directory.iterdir()) == []
    finally:
        shutil.rmtree(directory)


# -- 6: disk ---------------------------------------------------------------------------------------


def test_writing_600_mib_into_scratch_fails_at_the_scratch_cap(kernel_evaluator):
    """Class 6: the tmpfs scratch (kernel mode; in audit mode the scratch is a host directory and
    only RLIMIT_FSIZE caps each file) holds ``scratch_bytes``; the host disk is untouched."""
    sandbox = kernel_evaluator.sandbox
    result = run(
        sandbox,
        """
        import errno, os
        chunk, written = b"x" * (1 << 20), 0
        try:
            for n in range(600):
                with open(f"part{n // 8}", "ab") as fh:  # 8 MiB files: below RLIMIT_FSIZE
                    fh.write(chunk)
                written += len(chunk)
        except OSError as exc:
            report([written, errno.errorcode[exc.errno]])
        """,
        wall_s=60.0,
    )
    written, error = result.messages[0]
    assert error == "ENOSPC" and written <= sandbox.limits.scratch_bytes, result.messages
    assert run(sandbox, "import os; report(os.listdir('.'))").messages == [[]]


FILL_A_HOST_SCRATCH = {
    "600 MiB in 8 MiB files": """
        chunk = b"x" * (1 << 20)
        for n in range(600):
            with open(f"part{n // 8}", "ab") as fh:  # below RLIMIT_FSIZE
                fh.write(chunk)
    """,
    "files unlinked but kept open": """
        kept = []
        for n in range(12):  # 12 x 15 MiB, each file gone from the tree as soon as it is written
            kept.append(open(f"hidden{n}", "wb"))
            kept[-1].write(b"x" * (15 << 20))
            kept[-1].flush()
            os.unlink(f"hidden{n}")
    """,
    "5000 empty files": """
        for n in range(5000):
            open(f"empty{n}", "w").close()
    """,
}


@pytest.mark.parametrize("attack", list(FILL_A_HOST_SCRATCH))
def test_a_host_scratch_is_held_to_the_scratch_cap(attack):
    """Class 6: in audit mode the scratch is a host directory: RLIMIT_FSIZE caps each file, and
    the server kills a job whose scratch outgrows ``scratch_bytes`` or ``SCRATCH_ENTRIES``."""
    with Sandbox(workers=1, mode="audit") as sandbox:
        fill = textwrap.dedent(FILL_A_HOST_SCRATCH[attack])
        result = run(sandbox, f"import os, time\nreport(os.getcwd())\n{fill}time.sleep(5)\nreport('kept it')\n", wall_s=60.0)
        assert result.timed_out == "scratch" and len(result.messages) == 1, result  # killed before 'kept it'
        assert "scratch directory outgrew the cap" in result.describe()
        assert not os.path.exists(result.messages[0])  # and its scratch is gone
        assert run(sandbox, "import os; report(os.listdir('.'))").messages == [[]]  # usable, fresh scratch


@pytest.mark.parametrize("mode", ["auto", "audit"])
def test_a_killed_server_leaves_no_scratch_behind(mode):
    """Class 6: SIGKILL the server mid-job; its job's scratch (a host directory in audit mode) goes."""
    marker = f"marker-{uuid.uuid4().hex}"

    def scratch_with_marker() -> list[Path]:  # (other users' sandboxes may run here too)
        found = []
        for directory in Path("/tmp").glob("collab-sandbox-job-*"):
            with contextlib.suppress(OSError):
                if (directory / marker).exists():
                    found.append(directory)
        return found

    with Sandbox(workers=1, limits=SandboxLimits(memory_bytes=MEMORY_LIMIT), mode=mode) as sandbox:
        others = set(server_pids(os.getpid()))
        sandbox.isolation  # noqa: B018 (its server is up)
        (server,) = set(server_pids(os.getpid())) - others  # (in a user namespace: its keeper)
        source = f"import time\nopen({marker!r}, 'w').write('x')\ntime.sleep(600)"
        outcome = []
        thread = threading.Thread(target=lambda: outcome.append(run(sandbox, source, wall_s=120.0)))
        thread.start()
        deadline = time.monotonic() + 30
        if sandbox.isolation.filesystem_isolated:  # scratch in the server's mount namespace: wait for the job
            job_depth = 2 if sandbox.isolation.user_namespace else 1
            while not any(depth >= job_depth for _, depth in descendants_of(server)):
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.05)
        else:
            while not scratch_with_marker():
                assert time.monotonic() < deadline, "the job never wrote its marker"
                time.sleep(0.05)
        os.kill(server, signal.SIGKILL)
        thread.join(60)
        assert outcome and outcome[0].server_error, outcome
    assert scratch_with_marker() == []


def test_json_of_the_messages_stays_linear():
    """The message reader itself: a whole output of tiny messages parses in one pass."""
    from simulators.sandbox.pool import _parse_messages

    raw = (json.dumps({"kind": "call", "value": 1}).encode() + b"\n") * 200_000
    started = time.monotonic()
    messages, malformed = _parse_messages(raw)
    assert len(messages) == 200_000 and malformed == 0 and time.monotonic() - started < 10
