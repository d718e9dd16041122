"""``collab_app.commands.export``: what an export says as it goes, and a row it cannot read as a
message naming the session, not a traceback (the Data tab showing it: test_app_progress.py)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from app_process import REPO

from collab_app.commands.export import ExportError, export
from simulators.domain import Task, Turn
from simulators.store import SessionStore


@pytest.fixture
def store(tmp_path):
    store = SessionStore(tmp_path / "collab.sqlite")
    task = Task(id="t1", kind="backend", source="test", problem_description="Sum the even numbers.",
                ground_truth="def f(xs):\n    return 0", hidden_information="def f(xs):\n    return 0",
                test_cases={"test1": "f([])"})
    for reward in (0.0, 1.0):
        session = store.create_session(task, mode="human", human="person:test", model_version="m")
        store.add_turn(session, Turn(role="human", content="Sum the even numbers."))
        store.finish_session(session, answer="x", reward=reward, scores={"tests_passed": reward})
    return store


def test_an_export_says_each_step_as_it_starts(store, tmp_path):
    heard = []
    count = export(store, "sweet", tmp_path / "out.jsonl", progress=lambda *line: heard.append(line))
    assert count == 2
    assert heard == [("Reading session 1 of 2", 0, 2), ("Reading session 2 of 2", 1, 2), ("Writing 2 session(s)", 2, 2)]
    assert export(store, "sweet", tmp_path / "quiet.jsonl") == 2  # no listener: as before


def test_a_row_that_cannot_be_read_is_an_error_naming_its_session_also_on_the_command_line(store, tmp_path):
    (broken,) = [s.id for s in store.list_sessions(min_reward=1.0)]
    with sqlite3.connect(store.path) as connection:
        connection.execute("UPDATE sessions SET scores_json = '{not json' WHERE id = ?", (broken,))
    with pytest.raises(ExportError, match=f"session {broken} could not be read from the database"):
        export(store, "sweet", tmp_path / "out.jsonl")
    done = subprocess.run([sys.executable, "-m", "collab_app", "export", "--db", str(store.path), "--format", "sweet",
                           "--out", str(tmp_path / "cli.jsonl")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"export: session {broken} could not be read" in done.stderr
