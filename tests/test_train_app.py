"""Closing the loop in the running app (issue 7): sessions logged, a training run started through
the Train tab's handler, its evaluation gate, promotion with hot swap, a session in progress that
keeps its version, a training process killed without harm, resume, and rollback.

The app runs as a subprocess with a tiny random model as base, agent and simulator; the Train
tab's handlers are called over the app's HTTP API (gradio_client), sessions are played in Chromium.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from app_process import browser_page, running_app, start_task

from simulators.domain import Task
from simulators.llm.registry import ModelRegistry
from simulators.store import SessionStore
from simulators.tasks import write_tasks
from training.synthetic import scripted_episode

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful assistant."
TASKS = [
    Task(id="add", kind="backend", problem_description="Write a Python function that adds two numbers.",
         ground_truth="def add(a, b):\n    return a + b", test_cases={f"test{i}": f"add({i}, {i + 1})" for i in range(3)}),
    Task(id="neg", kind="backend", problem_description="Negate a number, please.",
         ground_truth="def neg(x):\n    return -x", test_cases={f"test{i}": f"neg({i})" for i in range(3)}),
    Task(id="held-out-double", kind="backend", problem_description="Double a number for me.",
         ground_truth="def double(x):\n    return 2 * x", test_cases={f"test{i}": f"double({i})" for i in range(3)}),
]
# Train tab settings, in the order of its inputs: kind, mode, since days, minimum sessions, algorithm,
# best-of-N, critic epochs, held-out tasks, longest agent turn, auto-promote, margin, continuous,
# human pairs for the actor, for the critic, rounds per evaluation episode, evaluation episodes per task.
SETTINGS = ["any", "any", 0, 4, "sweet", 2, 1, 1, 32, False, 0.0, 0, True, True, 1, 1]


def log_sessions(db, tokenizer) -> None:
    """Four scored sessions as people would have played them: per task, one success and one failure."""
    store = SessionStore(db)
    for task in TASKS[:2]:
        good = scripted_episode(task, ["What are the inputs?", f"I WANT TO ANSWER: {task.ground_truth}"], ["Integers."],
                                tokenizer, reward=1.0, scores={"success": True}, system_prompt=SYSTEM)
        bad = scripted_episode(task, ["I WANT TO ANSWER: def f(x): return 0"], [], tokenizer, reward=0.0,
                               scores={"success": False}, system_prompt=SYSTEM)
        for episode in (good, bad):
            session = store.add_episode(episode, mode="human")
        # The person edited the failed answer into the right one: a turn-level preference pair.
        store.add_feedback(session, "edit", turn_idx=1, before=bad.turns[1].content, after=good.turns[-1].content)


def status(client) -> tuple[str, str]:
    """(status markdown, evaluation markdown) of the Train tab, as its refresh shows them."""
    result = client.predict(api_name="/train_status")
    return result[0], result[1]


def wait_for_state(client, state: str, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text, _ = status(client)
        if f"· {state} ·" in text:
            return text
        assert state == "failed" or "· failed ·" not in text, text
        time.sleep(2)
    raise AssertionError(f"training did not reach {state!r}: {status(client)[0]}")


def agent_turn_versions(db, session_id: str) -> list[str]:
    return [t["model_version"] for t in SessionStore(db).turns(session_id) if t["role"] == "agent"]


def play_one_turn(page, url: str, text: str, db) -> str:
    """Start a session on the task whose description contains ``text``; its id once the agent answered."""
    known = {s.id for s in SessionStore(db).list_sessions(limit=10**6)}
    start_task(page, url, text)
    deadline = time.time() + 120
    while time.time() < deadline:
        new = [s for s in SessionStore(db).list_sessions(limit=10**6) if s.id not in known]
        if new and agent_turn_versions(db, new[0].id):
            return new[0].id
        time.sleep(0.5)
    stored = [(s.id[:8], s.model_version, [t["role"] for t in SessionStore(db).turns(s.id)])
              for s in SessionStore(db).list_sessions(limit=10**6)]
    raise AssertionError(f"the agent did not answer; stored: {stored}; the page shows:\n"
                         f"{page.locator('#collab-chat').inner_text()[-500:]}\n{page.locator('#collab-score').inner_text()}")


def send(page, db, session_id: str, text: str) -> None:
    before = len(agent_turn_versions(db, session_id))
    page.locator("#collab-input textarea").fill(text)
    page.locator("#collab-send").click()
    deadline = time.time() + 120
    while len(agent_turn_versions(db, session_id)) == before:
        assert time.time() < deadline, "the agent did not answer"
        time.sleep(0.5)


def test_train_promote_hot_swap_kill_resume_and_rollback(tmp_path, tiny_model_dir, monkeypatch):
    from gradio_client import Client
    from transformers import AutoTokenizer

    home, db = tmp_path, tmp_path / "collab.sqlite"
    write_tasks(TASKS, home / "tasks.jsonl")
    log_sessions(db, AutoTokenizer.from_pretrained(tiny_model_dir))
    base = str(tiny_model_dir)
    monkeypatch.setenv("COLLAB_HOME", str(home))  # this process reads the same registry as the app
    registry = ModelRegistry()
    with running_app(home, "--model", "current", "--base", base, "--simulator", base, "--tasks",
                     str(home / "tasks.jsonl"), "--db", str(db), "--max-new-tokens", "8") as app, \
            browser_page() as old_page:
        client = Client(app.url, verbose=False)
        # A session started before training, on the base model.
        old_session = play_one_turn(old_page, app.url, "Negate a number", db)
        assert agent_turn_versions(db, old_session) == [base]

        # Train from the tab's handler; the app keeps serving while the run goes on.
        client.predict(*SETTINGS, api_name="/train_start")
        wait_for_state(client, "finished")
        _, gate = status(client)
        assert "Evaluation gate · v0001 vs its parent (1 tasks)" in gate and "| reward |" in gate
        # The paired difference with its CI and n, and a verdict: one task can never promote.
        assert "95% CI [" in gate and "n=1 over 1 tasks" in gate
        assert "**⚠️ underpowered** — underpowered: n=1, CI [" in gate or "**✖ no gain** — no gain: n=1, CI [" in gate
        (run,) = sorted((home / "runs").glob("run-*"))
        version = json.loads((run / "version.json").read_text())
        assert version["evaluation"]["held_out"] is True and version["promoted"] is False
        # The two edits became preference pairs: snapshotted with the run, used by critic and actor.
        assert len((run / "preferences.jsonl").read_text().splitlines()) == 2
        metrics = registry.get("v0001").meta["metrics"]
        assert metrics["critic"]["human_pairs"] == 2 and metrics["actor"]["pair_sources"]["human"] == 2
        assert registry.current() is None  # not promoted yet: new sessions still get the base

        client.predict(api_name="/train_promote")
        assert registry.current().id == "v0001"
        new_session = play_one_turn(old_page.context.browser.new_page(), app.url, "Negate a number", db)
        assert agent_turn_versions(db, new_session) == ["registry:v0001"]  # hot swap: no restart
        send(old_page, db, old_session, "Integers, any size.")
        assert agent_turn_versions(db, old_session) == [base, base]  # in progress: keeps its version

        # A second run, killed mid-training: serving and the registry are untouched.
        client.predict(*SETTINGS, api_name="/train_start")
        (second,) = [r for r in sorted((home / "runs").glob("run-*")) if r != run]
        deadline = time.time() + 300
        while not (second / "critic" / "critic.json").is_file():  # killed once the critic is trained
            assert time.time() < deadline, (second / "process.log").read_text()
            time.sleep(0.2)
        os.killpg(int((second / "pid").read_text()), signal.SIGKILL)
        wait_for_state(client, "failed", timeout=30)
        assert registry.current().id == "v0001" and [v.id for v in registry.list_versions()] == ["v0001"]
        during = play_one_turn(old_page.context.browser.new_page(), app.url, "Double a number", db)
        assert agent_turn_versions(db, during) == ["registry:v0001"]

        # Resume: the finished critic is reused, the run completes and registers v0002 (from v0001).
        client.predict(api_name="/train_resume")
        wait_for_state(client, "finished")
        resumed = registry.get("v0002")
        assert resumed.parent == "v0001" and resumed.meta["metrics"]["critic"]["reused"] is True
        assert registry.current().id == "v0001"  # not promoted: serving did not change

        # Rollback to the base model: new sessions use it at once.
        client.predict("base", api_name="/train_rollback")
        assert registry.current() is None
        after = play_one_turn(old_page.context.browser.new_page(), app.url, "Negate a number", db)
        assert agent_turn_versions(db, after) == [base]


def test_train_tab_says_what_data_is_missing_and_why_a_run_failed(tmp_path, tiny_model_dir):
    """A new home: Promote is off with nothing to promote; sessions without a success/failure pair on
    one task are refused before a run starts, saying what is missing; a run that fails says why in
    the status line, under its own algorithm's stages."""
    from transformers import AutoTokenizer

    home, db = tmp_path, tmp_path / "collab.sqlite"
    write_tasks(TASKS, home / "tasks.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    store = SessionStore(db)
    for task in TASKS[:2]:  # two failures per task: no pair of different rewards anywhere
        for _ in range(2):
            store.add_episode(scripted_episode(task, ["I WANT TO ANSWER: def f(x): return 0"], [], tokenizer,
                                               reward=0.0, scores={"success": False}, system_prompt=SYSTEM),
                              mode="human")
    missing_base = str(tmp_path / "no-such-model")  # the run fails loading it (the app only warns)
    with running_app(home, "--model", str(tiny_model_dir), "--base", missing_base, "--simulator", str(tiny_model_dir),
                     "--tasks", str(home / "tasks.jsonl"), "--db", str(db)) as app, browser_page() as page:
        page.goto(app.url, wait_until="load")
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-status").filter(has_text="No training run yet").wait_for()
        assert page.locator("#train-promote").is_disabled()  # nothing to promote

        page.locator("#train-start").click()
        page.locator("#train-notice").filter(has_text="pairs of sessions on the same task").wait_for()
        assert "4 scored session(s) cover 2 task(s)" in page.locator("#train-notice").inner_text()
        page.locator("#train-algorithm").get_by_text("Rejection fine-tuning").click()
        page.locator("#train-start").click()
        page.locator("#train-notice").filter(has_text="needs a successful session").wait_for()
        assert not (home / "runs").exists() or not list((home / "runs").glob("run-*"))

        good = scripted_episode(TASKS[0], [f"I WANT TO ANSWER: {TASKS[0].ground_truth}"], [], tokenizer,
                                reward=1.0, scores={"success": True}, system_prompt=SYSTEM)
        store.add_episode(good, mode="human")
        page.locator("#train-start").click()  # rejection fine-tuning has its success now: the run starts
        page.locator("#train-notice").filter(has_text="Training started").wait_for()
        failed = page.locator("#train-status").filter(has_text="failed")
        failed.filter(has_text="The run failed:").wait_for(timeout=180_000)
        status_line = page.locator("#train-status").inner_text()
        assert "(rft)" in status_line and "stage: actor" in status_line and "critic" not in status_line
        assert "no-such-model" in status_line  # the reason, from the run's own output
        assert page.locator("#train-promote").is_disabled()
