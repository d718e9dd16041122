"""Training runs started from the app: data snapshot, command, cancel, continuous mode."""

from __future__ import annotations

import json

import pytest

from collab_app.training_jobs import TrainingManager, TrainRequest
from simulators.domain import Episode, Task, Turn
from simulators.store import SessionStore

TASK = Task(id="neg", kind="backend", problem_description="Negate a number.", ground_truth="def neg(x):\n    return -x",
            test_cases={"test1": "neg(1)"})


def log_scored_session(store: SessionStore, reward: float, answer: str = "I WANT TO ANSWER: def neg(x): return -x") -> str:
    episode = Episode(task=TASK, turns=[Turn("human", TASK.problem_description),
                                        Turn("agent", answer, input="<prompt>", output=answer, model="m")],
                      answer=answer, reward=reward, scores={"success": reward == 1.0}, human="person:ana",
                      agent_model="m")
    return store.add_episode(episode, mode="human")


@pytest.fixture
def manager(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_HOME", str(tmp_path))  # runs go to $COLLAB_HOME/runs
    return TrainingManager(SessionStore(tmp_path / "collab.sqlite"), base="local-base", simulator="local-sim")


def test_too_few_sessions_are_refused_with_the_count(manager):
    log_scored_session(manager.store, 1.0)
    with pytest.raises(ValueError, match=r"only 1 scored session\(s\) match; at least 4"):
        manager.start(TrainRequest(min_sessions=4))
    assert manager.job is None


def test_a_run_snapshots_its_data_and_preferences_and_cancel_kills_it(manager):
    sessions = [log_scored_session(manager.store, r) for r in (1.0, 0.0)]
    manager.store.add_feedback(sessions[1], "edit", turn_idx=1, before="I WANT TO ANSWER: def neg(x): return x",
                               after="I WANT TO ANSWER: def neg(x): return -x")
    job = manager.start(TrainRequest(min_sessions=2, algorithm="rft", critic_human_pairs=True))
    try:
        assert job.running
        with pytest.raises(ValueError, match="already going"):
            manager.start(TrainRequest(min_sessions=2))
    finally:
        manager.cancel()
    assert not job.running and job.status()["state"] == "cancelled"
    command = json.loads((job.out / "command.json").read_text())
    assert command[command.index("--algorithm") + 1] == "rft" and command[command.index("--base") + 1] == "local-base"
    assert command[command.index("--simulator") + 1] == "local-sim"
    assert "--human-pairs" in command and "--critic-human-pairs" in command
    assert len((job.out / "data.jsonl").read_text().splitlines()) == 2
    (pair,) = [json.loads(line) for line in (job.out / "preferences.jsonl").read_text().splitlines()]
    assert pair["chosen"].endswith("return -x") and pair["privileged"] == TASK.ground_truth
    assert pair["prompt"] == "<prompt>" and pair["source"] == "edit"


def test_continuous_mode_is_due_after_n_new_scored_sessions(manager):
    log_scored_session(manager.store, 1.0)
    manager = TrainingManager(manager.store)  # counts from what is stored now
    assert not manager.due()
    manager.continuous_every = 2  # (set_continuous would also start the watcher thread)
    log_scored_session(manager.store, 0.0)
    assert not manager.due()
    log_scored_session(manager.store, 1.0)
    assert manager.due()
