"""The sandbox contains hostile code and the evaluator survives it (real processes, no mocks).

Every containment test runs twice: with the strongest isolation this machine allows ("auto":
kernel namespaces, as root or through a user namespace) and with the fallback layers forced
("audit"). Run as root, the whole containment suite (this file, tests/test_scoring_backend.py and
tests/test_sandbox_attacks.py) also runs again as an ordinary user (``test_the_containment_suite_passes_as_an_unprivileged_user``).
"""

from __future__ import annotations

import collections
import datetime
import enum
import json
import logging
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import xml.etree.ElementTree as ElementTree
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from simulators.sandbox import NAN, Opaque, Sandbox, SandboxLimits, decode_value, encode_value

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 512 << 20
CONTAINMENT_SUITE = ("tests/test_sandbox.py", "tests/test_scoring_backend.py", "tests/test_sandbox_attacks.py")
# The ordinary user the containment suite re-runs as; .ci/run creates it (and sets the second
# variable, which turns a missing user from a skip into a failure).
UNPRIVILEGED_USER = os.environ.get("COLLAB_UNPRIVILEGED_USER", "collab-ci")
REQUIRE_UNPRIVILEGED = os.environ.get("COLLAB_REQUIRE_UNPRIVILEGED") == "1"


@pytest.fixture(scope="module", params=["auto", "audit"])
def box(request):
    with Sandbox(workers=1, limits=SandboxLimits(memory_bytes=MEMORY_LIMIT), mode=request.param) as sandbox:
        yield sandbox


def run(box: Sandbox, source: str, *, wall_s: float = 10.0, idle_s: float | None = None):
    return box.run("exec_source", {"source": textwrap.dedent(source)}, wall_s=wall_s, idle_s=idle_s)


def assert_still_usable(box: Sandbox) -> None:
    result = run(box, "report('ok')")
    assert result.messages == ["ok"] and result.clean_exit, result


def server_pids(parent: int) -> list[int]:
    return [
        pid
        for pid in children_of(parent)
        if b"simulators.sandbox" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def children_of(pid: int) -> list[int]:
    children = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
        pass
    return children


def descendants_of(pid: int) -> list[tuple[int, int]]:
    """(pid, depth) of every live descendant, depth 1 for children."""
    found, frontier, depth = [], [pid], 0
    while frontier:
        depth += 1
        frontier = [child for parent in frontier for child in children_of(parent) if not gone(child)]
        found += [(child, depth) for child in frontier]
    return found


def sandbox_processes() -> set[int]:
    """This test process's sandbox servers (and keepers) and anything running under them."""
    return {pid for pid, _ in descendants_of(os.getpid()) if not gone(pid)}


def gone(pid: int) -> bool:
    """No such process any more (or only its zombie, waiting to be reaped)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
            if int(real_uid) == uid and "\nState:\tZ" not in status:
                found.append(int(entry.name))
    return found


def namespaces_possible_here() -> bool:
    """Whether this host lets this process create the sandbox's namespaces, asked of util-linux
    ``unshare`` (not of the code under test): as root directly, else in a user namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed: cannot tell what the kernel allows")
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    probe = ["unshare", *user, "--net", "--ipc", "--mount", "--pid", "--fork", "true"]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def test_isolation_report_is_consistent(box):
    isolation = box.isolation
    kernel_layers = (isolation.network_isolated, isolation.filesystem_isolated, isolation.processes_isolated)
    if box.mode == "audit":
        assert isolation.mode == "audit" and not any(kernel_layers) and not isolation.user_namespace
    assert (isolation.mode == "namespaces") == (all(kernel_layers) and isolation.user_isolated)
    if not isolation.network_isolated:
        assert "audit hook" in isolation.network and "no network namespace" in isolation.network
    # Weak isolation is said loudly, with what would make it strong.
    assert bool(isolation.warning) == (isolation.mode == "audit")
    if isolation.warning:
        assert (
            "NOT kernel-isolated" in isolation.warning and "unprivileged user namespaces" in isolation.warning
        )


def test_auto_mode_gets_kernel_isolation_wherever_the_host_allows_it():
    expected = "namespaces" if namespaces_possible_here() else "audit"
    with Sandbox(workers=1) as sandbox:
        isolation = sandbox.isolation
        assert isolation.mode == expected, isolation
        if expected == "namespaces":  # not root: the same layers, through a user namespace of its own
            assert isolation.user_namespace == (os.geteuid() != 0)
            result = run(
                sandbox,
                "import os; cwd = os.getcwd()\n"
                "report([os.getppid(), cwd == os.environ['TMPDIR'], 'collab-sandbox-job' in cwd, os.path.exists('/proc')])",
            )
            assert result.messages == [[0, True, False, False]]  # own PID namespace, tmpfs scratch, no /proc


def test_weak_isolation_is_announced_at_start_up(caplog):
    with (
        caplog.at_level(logging.WARNING, logger="simulators.sandbox"),
        Sandbox(workers=1, mode="audit") as sandbox,
    ):
        warning = sandbox.isolation.warning
    assert warning and warning in caplog.text
    assert "audit mode was requested" in warning and "run the evaluator as root" in warning


def test_a_job_reports_values_and_its_prints_are_discarded(box):
    result = run(
        box, "print('x' * (5 << 20)); import sys; sys.stdout.write('more'); report({'a': [1, 2.5, None]})"
    )
    assert result.clean_exit
    assert result.messages == [{"a": [1, 2.5, None]}]
    assert result.stderr == ""


def test_an_infinite_loop_is_killed_at_the_wall_budget(box):
    started = time.monotonic()
    result = run(box, "report('spinning')\nwhile True:\n    pass", wall_s=1.0)
    assert result.timed_out == "wall" and "wall-clock budget 1 s" in result.describe()
    assert result.messages == ["spinning"]
    assert time.monotonic() - started < 5
    assert_still_usable(box)


def test_a_job_that_stops_making_progress_is_killed_at_the_idle_budget(box):
    result = run(box, "report(1)\nimport time\ntime.sleep(60)", wall_s=30.0, idle_s=0.5)
    assert result.timed_out == "idle" and result.messages == [1]
    assert result.wall_s < 5


def test_a_fork_bomb_is_contained_and_leaves_nothing_behind(box):
    assert_still_usable(box)  # the server is up: what runs under this process now is the baseline
    before = sandbox_processes()
    # Forks until the kernel (RLIMIT_NPROC) or the audit hook says no, then exits on its own: its
    # children sleep for an hour, so only the sandbox can end them. The budget is far beyond what
    # 16 forks take even on a starved machine: the outcome depends on no timing.
    result = run(
        box,
        """
        import os, time
        report(os.getuid())
        children = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(3600)
                children += 1
        except OSError as exc:
            report([children, type(exc).__name__])
        """,
        wall_s=60.0,
    )
    assert result.timed_out is None and result.exit_code == 0, result.describe()
    job_uid, (children, error) = result.messages
    assert error in ("BlockingIOError", "PermissionError")  # RLIMIT_NPROC, or the audit hook
    if box.isolation.processes_isolated:
        assert children < box.limits.max_processes
    else:
        assert children == 0  # fork refused outright
    assert sandbox_processes() == before  # not one of the sleeping children is left
    if box.isolation.user_isolated and not box.isolation.user_namespace:  # a uid of its own
        assert processes_of_uid(job_uid) == []
    assert_still_usable(box)


def test_a_memory_bomb_is_refused_by_the_address_space_limit(box):
    result = run(
        box,
        """
        try:
            hog = bytearray(8 << 30)
        except MemoryError:
            report("8 GiB refused")
        blocks = []
        try:
            while True:
                blocks.append(bytearray(32 << 20))
        except MemoryError:
            report(len(blocks) * 32)
        """,
    )
    assert result.clean_exit, result.describe()
    assert result.messages[0] == "8 GiB refused"
    assert 0 <= result.messages[1] < MEMORY_LIMIT >> 20
    assert_still_usable(box)


def test_writes_outside_the_scratch_directory_never_reach_the_host(box):
    tag = uuid.uuid4().hex
    outside = [
        f"/tmp/collab-escape-{tag}",
        str(REPO / f"collab-escape-{tag}"),
        f"{sys.prefix}/collab-escape-{tag}",
    ]
    result = run(
        box,
        f"""
        import os
        outcomes = {{}}
        for path in {outside!r}:
            try:
                with open(path, "w") as fh:
                    fh.write("escaped")
                outcomes[path] = "written"
            except OSError as exc:
                outcomes[path] = type(exc).__name__
        with open("inside.txt", "w") as fh:
            fh.write("scratch is writable")
        report([outcomes, os.getcwd(), sorted(os.listdir("."))])
        """,
    )
    outcomes, cwd, listing = result.messages[0]
    for path in outside:
        assert not os.path.exists(path), f"{path} was written on the host"
    assert outcomes[str(REPO / f"collab-escape-{tag}")] != "written"
    assert outcomes[f"{sys.prefix}/collab-escape-{tag}"] != "written"
    if box.isolation.filesystem_isolated:  # the job's /tmp is its own scratch, never the host's
        assert f"scratch on {cwd}" in box.isolation.filesystem
        # (elsewhere when the Python installation lives under /tmp, which is then read-only)
        assert listing == ([f"collab-escape-{tag}", "inside.txt"] if cwd == "/tmp" else ["inside.txt"])
    else:  # a host temp dir, deleted after the job
        assert outcomes[f"/tmp/collab-escape-{tag}"] == "PermissionError"
        assert listing == ["inside.txt"] and not os.path.exists(cwd)
    assert run(box, "import os; report(os.listdir('.'))").messages == [[]]  # the next job starts empty


def test_the_repository_and_datasets_are_invisible_with_a_filesystem_namespace(box):
    result = run(
        box, f"import os; report([os.path.exists(p) for p in ({str(REPO / 'simulators')!r}, '/work/shared')])"
    )
    if box.isolation.filesystem_isolated:
        assert result.messages == [[False, False]]
    else:
        assert result.clean_exit  # the audit fallback only guards writes: reading stays possible


def test_network_connections_never_arrive(box):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run(
            box,
            f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                report("connected")
            except OSError as exc:
                report(type(exc).__name__)
            """,
        )
        assert result.messages and result.messages[0] != "connected"
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_signalling_the_server_or_the_evaluator_kills_only_the_job(box):
    assert_still_usable(box)  # make sure the server is up
    (server,) = server_pids(os.getpid())[-1:]
    result = run(
        box,
        f"""
        import os, signal
        for pid in ({server}, {os.getpid()}):
            try:
                os.kill(pid, signal.SIGKILL)
                report("sent")
            except OSError as exc:
                report(type(exc).__name__)
        os.kill(os.getppid(), signal.SIGKILL)  # the job's parent: for pid 1 of a namespace, its own group
        report("survived")
        """,
    )
    assert result.messages == ["ProcessLookupError", "ProcessLookupError"] or all(
        m == "PermissionError" for m in result.messages
    ), result.messages
    assert not result.clean_exit and "survived" not in result.messages
    assert not gone(server)
    assert_still_usable(box)


@pytest.mark.parametrize("mode", ["auto", "audit"])
def test_jobs_and_servers_die_with_their_evaluator_and_leave_nothing_behind(mode):
    scratch_dirs_before = set(Path("/tmp").glob("collab-sandbox-job-*"))
    evaluator = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); from simulators.sandbox import Sandbox; "
            "box = Sandbox(workers=1, mode=sys.argv[2]); print(box.isolation.mode, flush=True); "
            "sys.stdin.readline(); "
            "box.run('exec_source', {'source': 'import time\\nwhile True: time.sleep(1)'}, wall_s=600)",
            str(REPO),
            mode,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert evaluator.stdout.readline().strip() in ("namespaces", "audit")  # its server is up
        # The job will be the one process deeper than the server (in a user namespace: its keeper's child).
        server_depth = max(depth for _, depth in descendants_of(evaluator.pid))
        evaluator.stdin.write("go\n")
        evaluator.stdin.flush()
        deadline = time.monotonic() + 30
        while not any(depth > server_depth for _, depth in descendants_of(evaluator.pid)):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        processes = [pid for pid, _ in descendants_of(evaluator.pid)]
    finally:
        evaluator.kill()
        evaluator.wait()
        evaluator.stdin.close()
        evaluator.stdout.close()
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in processes):
        assert time.monotonic() < deadline, "a server, keeper or job outlived the evaluator"
        time.sleep(0.05)
    assert set(Path("/tmp").glob("collab-sandbox-job-*")) <= scratch_dirs_before


def test_malformed_and_oversized_output_is_dropped(box):
    result = run(box, "import os; os.write(3, b'not json\\n{\"a\": \\n'); report(1)")
    assert result.messages == [1] and result.malformed_messages == 2
    result = run(box, "report('x' * (9 << 20)); report(2)")
    assert result.output_truncated and result.messages == []
    assert "output limit" in result.describe()


class Colour(enum.IntEnum):
    RED = 1


class Hostile:
    def __eq__(self, other):
        return True

    __hash__ = object.__hash__

    def __repr__(self):
        return "Hostile()"


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        -7,
        2.5,
        "text",
        [1, [2, (3, "4")]],
        {(1, 2): {"nested": {3, 4}}, 5: frozenset({"x"})},
        b"\x00bytes",
        complex(1, -2),
        3**40000,
        Decimal("1.10"),
        Fraction(1, 3),
        datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        datetime.date(2024, 1, 1),
        datetime.timedelta(days=1, seconds=5),
    ],
    ids=lambda value: type(value).__name__,  # str() of a 19,000-digit int is refused
)
def test_values_survive_the_trip_out_of_the_job(value):
    assert decode_value(encode_value(value)) == value


def test_subclasses_travel_as_their_base_and_strangers_as_opaque_values():
    point = collections.namedtuple("Point", "x y")(1, 2)
    assert decode_value(encode_value(point)) == (1, 2)
    assert decode_value(encode_value(collections.Counter("aab"))) == {"a": 2, "b": 1}
    assert decode_value(encode_value(Colour.RED)) == 1
    assert decode_value(encode_value(float("nan"))) is NAN
    assert decode_value(encode_value(Hostile())) == Opaque(f"{__name__}.Hostile", "Hostile()")
    assert decode_value(encode_value(Hostile())) != 1  # its __eq__ never runs on the evaluator side
    nested: list = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(ValueError, match="nested too deeply"):
        encode_value(nested)
    with pytest.raises(ValueError, match="too large"):
        encode_value(list(range(200_000)))
    assert math.isnan(float("nan")) and NAN != float("nan")


def test_signals_a_job_sends_itself_still_kill_it(box):
    result = run(box, "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nreport('alive')")
    assert result.messages == [] and not result.clean_exit
    if box.isolation.processes_isolated:
        assert result.exit_code == 128 + signal.SIGTERM


def test_libc_calls_cannot_undo_the_isolation(box):
    """ctypes gets past any audit hook, so with namespaces it is allowed: the kernel says no."""
    tag = uuid.uuid4().hex
    result = run(
        box,
        f"""
        import ctypes, os
        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except PermissionError:
            report("ctypes refused")
            raise SystemExit(0)
        MS_REMOUNT, O_CREAT_WRONLY, PTRACE_SEIZE, PR_CAPBSET_READ, CAP_SYS_ADMIN = 0x20, 0o101, 0x4206, 23, 21
        report({{
            "unshare a user namespace": libc.unshare(0x10000000),
            "mount a tmpfs over /usr": libc.mount(b"tmpfs", b"/usr", b"tmpfs", 0, None),
            "remount / read-write": libc.mount(None, b"/", None, MS_REMOUNT, None),
            "chroot elsewhere": libc.chroot(b"/usr"),
            "signal anything else": libc.kill(-1, 0),
            "trace the evaluator": libc.ptrace(PTRACE_SEIZE, {os.getpid()}, None, None),
            "create a host file": libc.open({str(REPO / f"collab-escape-{tag}")!r}.encode(), O_CREAT_WRONLY, 0o644),
            "keep CAP_SYS_ADMIN in the bounding set": libc.prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) or -1,
        }})
        """,
    )
    assert result.clean_exit, result.describe()
    if box.isolation.mode == "namespaces":
        (attempts,) = result.messages
        assert attempts == dict.fromkeys(attempts, -1), attempts  # every one refused
    else:
        assert result.messages == ["ctypes refused"]
    assert not (REPO / f"collab-escape-{tag}").exists()
    assert_still_usable(box)


def test_each_program_of_a_run_runs_in_a_job_of_its_own(box):
    """Nothing a program changes or leaves behind reaches the next one: not builtins, modules,
    files in scratch, nor (see test_scoring_backend) anything left in memory."""
    first = (
        "import builtins, string\nbuiltins.sorted = lambda x: [42]\nstring.digits = 'poisoned'\n"
        "open('planted.txt', 'w').write('x')\ndef f():\n    return sorted([1])"
    )
    second = "import os, string\ndef f():\n    return [sorted([1]), string.digits[:3], os.listdir('.')]"
    result = box.run(
        "run_calls",
        {
            "programs": [
                {"name": "first", "source": first, "calls": {"c": "f()"}},
                {"name": "second", "source": second, "calls": {"c": "f()"}},
            ],
            "load_timeout_s": 5.0,
            "call_timeout_s": 5.0,
            "seed": 0,
        },
        wall_s=30.0,
    )
    assert result.clean_exit and result.jobs == 2, result.describe()
    values = {m["program"]: m["value"] for m in result.messages if m["kind"] == "call"}
    assert values == {"first": [42], "second": [[1], "012", []]}


def test_programs_run_in_the_same_job_get_fresh_namespaces_and_an_unchanged_harness(box):
    """``same_job`` (task references only): one job, and what one program changes in the builtins,
    ``sys.modules``, alarm handler, recursion limit or working directory is put back for the next."""
    first = (
        "import builtins, os, random, signal, sys\n"
        "START = [os.getcwd(), sys.getrecursionlimit()]\n"
        "builtins.sorted = lambda x: [42]\nbuiltins.planted = 1\ndel builtins.abs\nrandom.seed(7)\n"
        "sys.modules['json'] = None\nsys.setrecursionlimit(60)\nos.chdir('/')\n"
        "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "def f():\n    return START"
    )
    second = (
        "import builtins, json, os, random, sys\n"
        "def f():\n"
        "    return [sorted([2, 1]), hasattr(builtins, 'planted'), 'START' in globals(), json.dumps([abs(-2)]),\n"
        "            random.random(), [os.getcwd(), sys.getrecursionlimit()]]\n"
        "def spin():\n    while True:\n        pass"
    )
    result = box.run(
        "run_calls",
        {
            "programs": [
                {"name": "first", "source": first, "calls": {"c": "f()"}},
                {"name": "second", "source": second, "calls": {"c": "f()", "spin": "spin()"}},
            ],
            "load_timeout_s": 5.0,
            "call_timeout_s": 0.5,
            "seed": 0,
            "same_job": True,
        },
        wall_s=30.0,
    )
    assert result.clean_exit and result.jobs == 1, result.describe()
    calls = {(m["program"], m["name"]): m for m in result.messages if m["kind"] == "call"}
    start = calls["first", "c"]["value"]
    assert calls["second", "c"]["value"] == [[1, 2], False, False, "[2]", 0.8444218515250481, start]
    assert calls["second", "spin"]["timed_out"] is True  # the alarm still fires


# One attempt of each class of escape an independent attack suite found (issue 17), run as a job
# by a sandbox started from a separate interpreter: each must fail inside the job.
ESCAPES = """
import os, socket, sys
outcomes = {}
def attempt(name, action):
    try:
        action()
        outcomes[name] = "escaped"
    except BaseException as exc:
        outcomes[name] = type(exc).__name__
def fill_disk():
    for index in range(100):  # 100 MiB in 1 MiB files: over the 64 MiB scratch
        with open(f"fill-{index}", "wb") as fh:
            fh.write(bytes(1 << 20))
attempt("1: read the evaluator's memory", lambda: open("/proc/EVALUATOR/mem", "rb"))
attempt("1: read the evaluator's environment", lambda: open("/proc/EVALUATOR/environ", "rb"))
attempt("2: read /etc/shadow", lambda: open("/etc/shadow", "rb").read(1))
attempt("2: write a file beside the task files", lambda: open("REPO/escape-TAG", "w"))
attempt("3: signal the evaluator", lambda: os.kill(EVALUATOR, 0))
attempt("3: signal every process", lambda: os.kill(-1, 0))
attempt("3: reach a loopback listener", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2))
attempt("4: hard-link a host file into scratch", lambda: os.link("/etc/passwd", "passwd-link"))
try:
    open("/tmp/escape-TAG", "w").write("the job's own /tmp")  # its scratch (or read-only), never the host's
except OSError:
    pass
attempt("6: fill the disk", fill_disk)
report([os.getcwd(), os.path.isdir(sys.prefix), outcomes])
"""


def virtualenv_under(parent: Path) -> Path:
    venv = Path(tempfile.mkdtemp(prefix="collab-venv-", dir=parent))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv


def virtualenv_parent(where: str) -> Path:
    if where == "/tmp":
        return Path("/tmp")
    home = Path.home()
    if str(home).startswith(("/tmp", tempfile.gettempdir())) or not os.access(home, os.W_OK):
        (pytest.fail if REQUIRE_UNPRIVILEGED else pytest.skip)(f"HOME={home} is not a writable home directory")
    return home


@pytest.mark.parametrize("where", ["/tmp", "home"])
def test_a_virtualenv_under_tmp_or_a_home_directory_is_kernel_isolated_and_contains_each_escape(where):
    """Kernel isolation must not depend on where Python is installed: a venv under /tmp (where CI
    may clone; it is bound into the read-only view, so the scratch moves to /var/tmp) or under
    a home directory (root's is 0700) gets every namespace, and each class of escape fails."""
    if not namespaces_possible_here():
        pytest.skip("no namespaces on this host: the view is never built")
    venv = virtualenv_under(virtualenv_parent(where))
    tag = uuid.uuid4().hex
    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            script = (
                "import importlib.util, json, os, sys\n"
                "spec = importlib.util.spec_from_file_location('simulators.sandbox', sys.argv[1] + '/__init__.py',\n"
                "                                              submodule_search_locations=[sys.argv[1]])\n"
                "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module\n"
                "spec.loader.exec_module(module)\n"
                "with module.Sandbox(workers=1) as box:\n"
                "    source = sys.argv[2].replace('EVALUATOR', str(os.getpid()))\n"
                "    run = box.run('exec_source', {'source': source}, wall_s=60)\n"
                "    print(json.dumps([box.isolation.mode, run.messages, run.describe()]))\n"
            )
            source = (ESCAPES.replace("REPO", str(REPO)).replace("TAG", tag)
                      .replace("PORT", str(listener.getsockname()[1])))
            done = subprocess.run(
                [str(venv / "bin" / "python"), "-c", script, str(REPO / "simulators" / "sandbox"), source],
                capture_output=True, text=True, timeout=180, cwd="/",
            )  # fmt: skip
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()  # nothing ever arrived
        assert done.returncode == 0, done.stderr
        mode, messages, how = json.loads(done.stdout.splitlines()[-1])
        assert mode == "namespaces" and len(messages) == 1, (how, done.stderr)
        cwd, sees_its_python, outcomes = messages[0]
        assert cwd == ("/var/tmp" if where == "/tmp" else "/tmp") and sees_its_python
        assert len(outcomes) == 9 and "escaped" not in outcomes.values(), outcomes
        assert not os.path.exists(f"/tmp/escape-{tag}") and not (REPO / f"escape-{tag}").exists()
    finally:
        shutil.rmtree(venv)


def in_a_container(code: str, *, nested_user_namespaces: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` as root of a user namespace of its own, as in a rootless container:
    every uid but root is unmapped and root's capabilities end at the container. Without
    ``nested_user_namespaces`` it may create no further user namespace (a host refusing them)."""
    limit = "true" if nested_user_namespaces else "echo 0 > /proc/sys/user/max_user_namespaces"
    command = ["unshare", "--user", "--map-root-user", "sh", "-c", f'{limit} && exec "$0" -c "$1"',
               sys.executable, code]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_where_the_kernel_cannot_isolate_the_sandbox_refuses_to_run_code_unless_the_user_opts_in():
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    probe = in_a_container("import os", nested_user_namespaces=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace here to play a container in: {probe.stderr[-300:]}")
    code = textwrap.dedent("""
        import json
        from test_scoring_backend import DOUBLE, double_task
        from simulators.scoring.backend import BackendEvaluator
        from simulators.sandbox import SandboxError
        try:
            with BackendEvaluator(workers=1) as evaluator:
                result = evaluator.evaluate(double_task(), DOUBLE)
            print(json.dumps(["scored", result.tests_passed, result.isolation.to_dict()]))
        except SandboxError as exc:
            print(json.dumps(["refused", str(exc)]))
    """)
    tests = {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    refused = json.loads(in_a_container(code, nested_user_namespaces=False, **tests).stdout.splitlines()[-1])
    assert refused[0] == "refused" and "refusing to run untrusted code here" in refused[1], refused
    assert "COLLAB_ALLOW_WEAK_SANDBOX=1" in refused[1] and "no processes isolation" in refused[1]
    done = in_a_container(code, nested_user_namespaces=False, **tests, COLLAB_ALLOW_WEAK_SANDBOX="1")
    verdict, passed, isolation = json.loads(done.stdout.splitlines()[-1])
    assert (verdict, passed, isolation["mode"]) == ("scored", 1.0, "audit"), done.stderr
    assert isolation["warning"].startswith("SANDBOX WARNING") and "SANDBOX WARNING" in done.stderr
    # Its network and filesystem namespaces still came up (they need no more than that root).
    assert isolation["network_isolated"] and isolation["filesystem_isolated"]


def test_root_of_a_container_user_namespace_gets_kernel_isolation_through_a_nested_one():
    """In a rootless container (root of a user namespace, other uids unmapped) the sandbox nests a
    user namespace of its own, as an ordinary user's does; it used to die at start-up there."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    code = ("import json, os\nfrom simulators.sandbox import Sandbox\nwith Sandbox(workers=1) as box:\n"
            "    run = box.run('exec_source', {'source': 'import os; report(os.getuid())'}, wall_s=30)\n"
            "    print(json.dumps([box.isolation.mode, box.isolation.user_namespace, run.messages]))\n")
    done = in_a_container(code)
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"no user namespaces here: {done.stderr[-300:]}")
    assert json.loads(done.stdout.splitlines()[-1]) == ["namespaces", True, [0]], done.stderr


# -- the containment suite as an ordinary user ---------------------------------------------------


def unprivileged_account() -> pwd.struct_passwd:
    """The CI's unprivileged user, or a skip (a failure where CI requires it) saying why not."""

    def unavailable(reason: str) -> None:
        (pytest.fail if REQUIRE_UNPRIVILEGED else pytest.skip)(reason)

    if os.geteuid() != 0:
        pytest.skip("already running as an ordinary user: this run is the unprivileged mode")
    try:
        account = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        unavailable(
            f"no user {UNPRIVILEGED_USER!r} here to re-run the containment suite as; .ci/run creates "
            f"one (useradd --system {UNPRIVILEGED_USER}), or set COLLAB_UNPRIVILEGED_USER"
        )
    probe = subprocess.run(
        [*as_user(account), sys.executable, "-c", "import simulators.sandbox, pytest"],
        capture_output=True, text=True, cwd=REPO, env=unprivileged_env(account, "/tmp"), timeout=120,
    )  # fmt: skip
    if probe.returncode != 0:
        unavailable(
            f"user {UNPRIVILEGED_USER!r} cannot run {sys.executable} on {REPO} (every directory above "
            f"them needs o+x; .ci/run grants it): {probe.stderr.strip()[-300:]}"
        )
    return account


def as_user(account: pwd.struct_passwd) -> list[str]:
    return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--"]


def unprivileged_env(account: pwd.struct_passwd, home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": home,
        "TMPDIR": "/tmp",
        "USER": account.pw_name,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONDONTWRITEBYTECODE": "1",  # the repository is root's: no __pycache__ attempts
    }


@pytest.mark.slow
def test_the_containment_suite_passes_as_an_unprivileged_user():
    """Re-runs the containment suite (``CONTAINMENT_SUITE``) as an ordinary user: the same containment
    expectations must hold in that mode, and its "auto" sandbox must be kernel-isolated wherever
    the kernel allows user namespaces."""
    account = unprivileged_account()
    scratch = tempfile.mkdtemp(prefix="collab-unprivileged-")
    # Its own home where it has one (.ci/run makes it): a virtualenv test runs from there.
    own_home = os.path.isdir(account.pw_dir) and os.stat(account.pw_dir).st_uid == account.pw_uid
    try:
        os.chown(scratch, account.pw_uid, account.pw_gid)
        report = Path(scratch) / "junit.xml"
        done = subprocess.run(
            [
                *as_user(account), sys.executable, "-m", "pytest", *CONTAINMENT_SUITE, "-q", "-p",
                "no:cacheprovider", f"--junitxml={report}", f"--basetemp={scratch}/pytest",
            ],
            capture_output=True, text=True, cwd=REPO, timeout=900,
            env=unprivileged_env(account, account.pw_dir if own_home else scratch),
        )  # fmt: skip
        outcome = done.stdout[-3000:] + done.stderr[-2000:]
        assert done.returncode == 0, outcome
        suite = ElementTree.parse(report).getroot().find("testsuite")
        counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
        assert counts["tests"] >= 60 and counts["failures"] == counts["errors"] == 0, (counts, outcome)
        skipped = {case.get("name") for case in suite.iter("testcase") if case.find("skipped") is not None}
        # Only this test skips itself there (and, without a home of its own, the home virtualenv).
        expected = {"test_the_containment_suite_passes_as_an_unprivileged_user"}
        if not own_home:
            expected.add("test_a_virtualenv_under_tmp_or_a_home_directory_is_kernel_isolated_and_contains_each_escape[home]")
        assert skipped == expected, skipped
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
