"""The sandbox contains hostile code and the evaluator survives it (real processes, no mocks).

Every containment test runs twice: with the strongest isolation this machine allows ("auto":
kernel namespaces when running as root) and with the fallback layers forced ("audit").
"""

from __future__ import annotations

import collections
import datetime
import enum
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from simulators.sandbox import NAN, Opaque, Sandbox, SandboxLimits, decode_value, encode_value

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 512 << 20


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
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


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


def test_isolation_report_is_consistent(box):
    isolation = box.isolation
    kernel_layers = (isolation.network_isolated, isolation.filesystem_isolated, isolation.processes_isolated)
    if box.mode == "audit":
        assert isolation.mode == "audit" and not any(kernel_layers)
    assert (isolation.mode == "namespaces") == (
        all(kernel_layers) and "evaluator's uid" not in isolation.user
    )
    if not isolation.network_isolated:
        assert "audit hook" in isolation.network and "no network namespace" in isolation.network


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
    result = run(
        box,
        """
        import os, time
        report(os.getuid())
        children = 0
        try:
            while True:
                if os.fork() == 0:  # children wait rather than spin: on 2 busy cores spinning
                    time.sleep(3600)  # ones starve the parent before it reaches the limit
                children += 1
        except OSError as exc:
            report([children, type(exc).__name__])
        while True:
            pass
        """,
        wall_s=2.0,
    )
    assert result.timed_out == "wall"
    job_uid, (children, error) = result.messages
    assert error in ("BlockingIOError", "PermissionError")  # RLIMIT_NPROC, or the audit hook
    if box.isolation.processes_isolated:
        assert children < box.limits.max_processes
    else:
        assert children == 0  # fork refused outright
    if job_uid != os.getuid():  # a uid of its own: nothing may still run under it
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
        assert cwd == "/tmp" and listing == [f"collab-escape-{tag}", "inside.txt"]
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
            "Sandbox(workers=1, mode=sys.argv[2]).run('exec_source', "
            "{'source': 'import time\\nwhile True: time.sleep(1)'}, wall_s=600)",
            str(REPO),
            mode,
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not (servers := server_pids(evaluator.pid)) or not children_of(servers[0]):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        server, job = servers[0], children_of(servers[0])[0]
    finally:
        evaluator.kill()
        evaluator.wait()
    deadline = time.monotonic() + 10
    while not (gone(server) and gone(job)):
        assert time.monotonic() < deadline, "the server or its job outlived the evaluator"
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
