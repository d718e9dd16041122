"""The SQLite session store: schema, turn-by-turn commits, concurrency, crash safety."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from simulators.domain import Task, Turn
from simulators.store import MIGRATIONS, SessionStore, Vote

TASK = Task(id="t-1", kind="backend", problem_description="Add two numbers. The signature of the function is: "
            "def add(a, b)", ground_truth="def add(a, b):\n    return a + b",
            test_cases={f"test{i}": f"add({i}, 1)" for i in range(10)})
REPO = Path(__file__).resolve().parents[1]


def test_schema_is_versioned_and_reopening_is_idempotent(tmp_path):
    store = SessionStore(tmp_path / "db.sqlite")
    assert store.schema_version == len(MIGRATIONS)
    sid = store.create_session(TASK, mode="human", human="person:ana", model_version="v1")
    again = SessionStore(tmp_path / "db.sqlite")
    assert again.schema_version == len(MIGRATIONS)
    assert [s.id for s in again.list_sessions()] == [sid]
    mode = again._connection().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_session_round_trips_into_an_episode_with_feedback_and_scores(tmp_path):
    store = SessionStore(tmp_path / "db.sqlite")
    sid = store.create_session(TASK, mode="human", human="person:ana", model_version="v1")
    store.add_turn(sid, Turn("human", TASK.problem_description))
    idx = store.add_turn(sid, Turn("agent", "Ints?", input="<p>", output="Ints?", model="v1", latency_s=0.2))
    store.add_feedback(sid, "edit", turn_idx=idx, before="Ints?", after="Integers or floats?")
    store.replace_turn(sid, idx, Turn("agent", "Integers or floats?", input="<p>", output="Ints?", model="v1"))
    store.finish_session(sid, answer="def add(a, b): return a + b", reward=1.0, scores={"success": True})
    store.rate_session(sid, 5, "great")
    episode = store.episode(sid)
    assert episode.task == TASK and episode.reward == 1.0
    assert [t.content for t in episode.turns] == [TASK.problem_description, "Integers or floats?"]
    assert episode.scores == {"success": True, "rating": 5} and episode.meta["mode"] == "human"
    (event,) = store.feedback(sid)
    assert (event["kind"], event["before"], event["after"]) == ("edit", "Ints?", "Integers or floats?")
    with pytest.raises(ValueError):
        store.rate_session(sid, 9)
    store.truncate_turns(sid, 1)
    assert len(store.episode(sid).turns) == 1 and store.episode(sid).reward is None


def test_filters(tmp_path):
    store = SessionStore(tmp_path / "db.sqlite")
    a = store.create_session(TASK, mode="human", human="person:a", model_version="v1")
    b = store.create_session(TASK, mode="simulator", human="simulator:m", model_version="v2")
    store.finish_session(a, answer="x", reward=0.2, scores={})
    store.finish_session(b, answer="y", reward=0.9, scores={})
    assert [s.id for s in store.list_sessions(mode="simulator")] == [b]
    assert [s.id for s in store.list_sessions(model_version="v1")] == [a]
    assert [s.id for s in store.list_sessions(min_reward=0.5)] == [b]


def test_every_session_is_listed_unless_a_limit_is_asked_for(tmp_path):
    """Exports and training read all sessions: a default cap would drop the oldest without a word."""
    store = SessionStore(tmp_path / "db.sqlite")
    ids = [store.create_session(TASK, mode="simulator", human="simulator:m", model_version="v1") for _ in range(1005)]
    assert {s.id for s in store.list_sessions()} == set(ids)
    assert len(store.episodes(mode="simulator")) == 1005
    assert len(store.list_sessions(limit=10)) == 10


def test_renders_are_files_named_by_hash(tmp_path):
    store = SessionStore(tmp_path / "db.sqlite")
    digest = store.save_render(b"\x89PNG fake bytes", 10, 20)
    assert store.save_render(b"\x89PNG fake bytes") == digest
    assert store.render_path(digest).read_bytes() == b"\x89PNG fake bytes"


def test_concurrent_writers_lose_nothing(tmp_path):
    store = SessionStore(tmp_path / "db.sqlite")
    sessions = [store.create_session(TASK, mode="human", human=f"person:{i}", model_version="v1") for i in range(4)]

    def chat(sid: str) -> None:
        for i in range(25):
            store.add_turn(sid, Turn("human" if i % 2 == 0 else "agent", f"message {i}"))

    threads = [threading.Thread(target=chat, args=(sid,)) for sid in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for sid in sessions:
        assert [t["content"] for t in store.turns(sid)] == [f"message {i}" for i in range(25)]


def test_a_killed_writer_loses_no_committed_turn(tmp_path):
    """A process that is SIGKILLed right after add_turn returns keeps every turn in the file."""
    db = tmp_path / "db.sqlite"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from simulators.store import SessionStore
        from simulators.domain import Task, Turn
        store = SessionStore({str(db)!r})
        task = Task(id="k", kind="frontend", problem_description="p", ground_truth="<html></html>")
        sid = store.create_session(task, mode="human", human="person:x", model_version="v")
        for i in range(30):
            store.add_turn(sid, Turn("human", f"turn {{i}}"))
            print(i, flush=True)
        import time; time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == "29":
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (session,) = SessionStore(db).list_sessions()
    assert session.turns == 30


def test_votes_are_typed_records_that_survive_the_round_trip_and_read_older_payloads(tmp_path):
    store = SessionStore(tmp_path / "db.sqlite")
    session = store.create_session(Task(id="t", kind="backend", problem_description="p", ground_truth="g"),
                                   mode="compare", human="person:t", model_version="x")
    vote = Vote(winner="b", final=False, model_a="x", model_b="y", blind=True, specs=("x-spec", "y-spec"),
                identity_leak=("a",), round=2, prompt="P", a="reply a", b="reply b")
    store.add_vote(session, vote, turn_idx=3)
    store.add_feedback(session, "vote", payload={"winner": "tie", "final": True, "model_a": "x", "model_b": "y",
                                                 "from_a_later_version": 1})  # older or newer: still read
    store.add_feedback(session, "like", turn_idx=1)  # not a vote
    stored, older = store.votes()
    assert stored == Vote(**{**vote.__dict__, "session_id": session, "turn_idx": 3})
    assert store.feedback()[0]["payload"]["specs"] == ["x-spec", "y-spec"]  # JSON lists on disk
    assert (older.winner, older.final, older.blind, older.specs) == ("tie", True, False, ())
