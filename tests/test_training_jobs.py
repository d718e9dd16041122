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
    assert command[command.index("--eval-limit") + 1] == "8" and command[command.index("--eval-samples") + 1] == "2"
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


def test_the_train_tab_shows_the_gate_verdict_with_the_paired_ci_and_n():
    from collab_app.tabs.train import evaluation_markdown
    from training.stats import gate, paired_bootstrap

    def status(decision, promoted=False):
        evaluation = {"tasks": 8, "new": {"n": 8, "reward": 0.5}, "parent": {"n": 8, "reward": 0.375},
                      "gate": {"metric": "reward", **decision.as_dict()}}
        return {"version": {"version": "v0003", "promoted": promoted, "evaluation": evaluation}}

    noisy = gate(paired_bootstrap([1, 1, 1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]))
    text = evaluation_markdown(status(noisy))
    d = noisy.as_dict()["difference"]
    assert f"**⚠️ underpowered** — underpowered: n=8, CI [{noisy.difference.low:.3f}, " in text
    assert f"**+0.125 (95% CI [{d['low']:.3f}, {d['high']:.3f}], n=8 over 8 tasks)**" in text
    assert "| reward | 0.500 | 0.375 |" in text and "promoted" not in text

    clear = gate(paired_bootstrap([1.0] * 8, [0.0] * 8))
    assert "**✅ promote** — promote: n=8, CI [1.000, 1.000]" in evaluation_markdown(status(clear))
    assert "The gate would promote it; automatic promotion was off" in evaluation_markdown(status(clear))
    assert "✅ promoted: new sessions use it now" in evaluation_markdown(status(clear, promoted=True))
    # A version evaluated before the gate existed still shows its means.
    old = {"version": {"version": "v0001", "evaluation": {"tasks": 2, "new": {"reward": 0.5}, "parent": {"reward": 0.0}}}}
    assert "| reward | 0.500 | 0.000 |" in evaluation_markdown(old) and "CI" not in evaluation_markdown(old)
