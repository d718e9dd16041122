"""The Compare tab in the real app and a real browser: two tiny models, votes, the reveal, the export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from app_process import REPO, browser_page, running_app
from test_comparison import tiny_model_b_dir  # noqa: F401 - the second model, a fixture

from simulators.store import SessionStore

pytestmark = pytest.mark.slow

TASK = {"id": "sum-even", "kind": "backend",
        "problem_description": "Sum the even numbers of a list. The signature of the function is: def sum_even(xs)",
        "ground_truth": "def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)",
        "test_cases": {f"test{i}": f"sum_even(list(range(-{i}, {i * 3})))" for i in range(1, 11)}}


def wait_for_vote(page) -> None:
    page.wait_for_selector("#compare-vote-a:not([disabled])", timeout=60_000)


def pick_task(page) -> None:
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-task input").click()
    page.locator("#compare-task input").fill("Sum the even")
    page.get_by_role("option").filter(has_text="Sum the even").first.click()


def test_a_blind_battle_from_the_pool_stores_votes_updates_the_leaderboard_and_exports_pairs(
        tmp_path, tiny_model_dir, tiny_model_b_dir):  # noqa: F811
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(TASK) + "\n")
    db = tmp_path / "collab.sqlite"
    names = (str(tiny_model_dir), str(tiny_model_b_dir))
    with running_app(tmp_path, "--model", names[0], "--arena-models", ",".join(names), "--tasks", str(tasks),
                     "--db", str(db), "--max-new-tokens", "8") as app, browser_page() as page:
        page.goto(app.url, wait_until="load")
        pick_task(page)
        assert not page.locator("#compare-model-2").is_visible()  # the arena names no model
        page.locator("#compare-start").click()  # the pool's one pair, drawn by the app

        tab = page.locator("#compare-tab")
        wait_for_vote(page)
        assert not any(name in tab.inner_text() for name in names)
        assert names[1] not in page.locator("body").inner_text()  # the header names only the app's agent
        page.locator("#compare-vote-b").click()
        page.wait_for_selector("#compare-input textarea:not([disabled])", timeout=30_000)
        page.locator("#compare-input textarea").fill("Negative even numbers count too.")
        page.locator("#compare-send").click()
        wait_for_vote(page)
        page.locator("#compare-vote-a").click()
        page.wait_for_selector("#compare-end:not([disabled])", timeout=30_000)
        page.locator("#compare-end").click()
        page.locator("#compare-status").filter(has_text="Overall").wait_for(timeout=30_000)
        assert not any(name in tab.inner_text() for name in names)
        page.locator("#compare-vote-tie").click()
        page.locator("#compare-result").filter(has_text="Model A was").wait_for(timeout=60_000)
        revealed = tab.inner_text()
        assert all(name in revealed for name in names)
        assert "of tests passed" in page.locator("#compare-result").inner_text()
        assert "A blind battle: the Leaderboard counts it." in revealed

        page.get_by_role("tab", name="Leaderboard").click()  # the battle is rated, with its interval
        table = page.locator("#leaderboard-table")
        table.filter(has_text=names[1]).wait_for(timeout=30_000)
        assert table.inner_text().count("0-1-0") == 2 and "–" in table.inner_text()  # the tie, and the CI

    store = SessionStore(db)
    sessions = store.list_sessions(mode="compare")
    assert len(sessions) == 2 and {s.model_version for s in sessions} == set(names)
    assert {s.status for s in sessions} == {"scored"}
    votes = [e["payload"] for e in store.feedback() if e["kind"] == "vote"]
    assert [(v["winner"], v["final"], v["round"]) for v in votes] == [("b", False, 1), ("a", False, 2),
                                                                       ("tie", True, 2)]
    assert {votes[0]["model_a"], votes[0]["model_b"]} == set(names)
    assert all(v["blind"] and v["specs"] == sorted(names) and v["identity_leak"] == [] for v in votes)
    assert "Negative even numbers count too." in votes[1]["prompt"]

    out = tmp_path / "pairs.jsonl"
    subprocess.run([sys.executable, "-m", "collab_app", "export", "--db", str(db), "--format", "trl",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [{"prompt": v["prompt"], "chosen": v[v["winner"]], "rejected": v["b" if v["winner"] == "a" else "a"]}
                for v in votes[:2] if v["a"] != v["b"]]
    assert pairs == expected and pairs


def test_the_same_model_twice_is_sampled_and_the_leaderboard_says_why_it_leaves_the_votes_out(tmp_path,
                                                                                             tiny_model_dir):
    """``current`` (serving the base) against the base's own spec, as a developer may choose them:
    allowed, said, and sampled so the two replies differ; the Leaderboard then says why it rates
    none of these votes (not blind; and, counted anyway, a model against itself)."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(TASK) + "\n")
    db = tmp_path / "collab.sqlite"
    with running_app(tmp_path, "--model", "current", "--base", str(tiny_model_dir), "--tasks", str(tasks),
                     "--db", str(db), "--max-new-tokens", "16") as app, browser_page() as page:
        page.goto(app.url, wait_until="load")
        pick_task(page)
        page.get_by_text("Choose two models (for developers").click()
        page.locator("#compare-model-2 input").fill(str(tiny_model_dir))  # model 1 is `current`
        page.locator("#compare-start").click()
        page.locator("#compare-notice").filter(has_text="Both specs serve the same model").wait_for(timeout=60_000)
        wait_for_vote(page)
        replies = [page.locator(f"#compare-chat-{p} .message.bot").last.inner_text() for p in "ab"]
        assert replies[0] != replies[1]  # greedy decoding would write the same reply twice
        page.locator("#compare-vote-a").click()
        page.wait_for_selector("#compare-end:not([disabled])", timeout=30_000)
        page.locator("#compare-end").click()
        page.locator("#compare-status").filter(has_text="Overall").wait_for(timeout=30_000)
        page.locator("#compare-vote-b").click()
        page.locator("#compare-result").filter(has_text="Model A was").wait_for(timeout=60_000)

        assert "not blind: the Leaderboard leaves these votes out" in page.locator("#compare-result").inner_text()

        page.get_by_role("tab", name="Leaderboard").click()
        note = page.locator("#leaderboard-note")
        note.filter(has_text="1 vote(s) of the “choose two models” mode left out").wait_for(timeout=30_000)
        page.locator("#leaderboard-unblind input").check()
        note.filter(has_text="1 vote(s) left out: they compare a model with itself").wait_for(timeout=30_000)
        assert str(tiny_model_dir) in note.inner_text() and "1 round vote(s) are not counted" in note.inner_text()
    votes = [e["payload"] for e in SessionStore(db).feedback() if e["kind"] == "vote"]
    assert [v["model_a"] == v["model_b"] == str(tiny_model_dir) for v in votes] == [True, True]
    assert [v["blind"] for v in votes] == [False, False]
