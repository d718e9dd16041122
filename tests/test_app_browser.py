"""The real app in a real browser: a person collaborates, the result is scored, stored and exported.

The agent is a scripted model (known replies, so the final answer can be correct) or the tiny
random model; the app runs as a subprocess with its own COLLAB_HOME and database.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from urllib.parse import urljoin

import pytest
from app_process import REPO, agent_messages, browser_page, running_app, start_task, wait_for_text
from playwright.sync_api import expect

from simulators.domain import ANSWER_MARKER
from simulators.store import SessionStore
from simulators.tasks import load_sample_tasks
from simulators.trajectories import load_episodes

pytestmark = pytest.mark.slow

TASK = {"id": "sum-even", "kind": "backend",
        "problem_description": "Sum the even numbers of a list. The signature of the function is: def sum_even(xs)",
        "ground_truth": "def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)",
        "test_cases": {f"test{i}": f"sum_even(list(range(-{i}, {i * 3})))" for i in range(1, 11)}}
QUESTION = "Should negative even numbers count too?"
ANSWER = f"{ANSWER_MARKER}\n```python\ndef sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)\n```"


def wait_until_feedback(db, kinds: list[str], timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while [e["kind"] for e in SessionStore(db).feedback()] != kinds:
        assert time.time() < deadline, f"timed out waiting for feedback {kinds}"
        time.sleep(0.2)


@pytest.fixture
def home(tmp_path):
    (tmp_path / "tasks.jsonl").write_text(json.dumps(TASK) + "\n")
    (tmp_path / "script.json").write_text(json.dumps([QUESTION, ANSWER]))
    return tmp_path


def test_backend_session_to_a_scored_answer_then_export(home):
    db = home / "collab.sqlite"
    with running_app(home, "--model", f"scripted:{home / 'script.json'}", "--tasks", str(home / "tasks.jsonl"),
                     "--db", str(db)) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-chat", QUESTION)
        box = page.locator("#collab-input textarea")  # Shift+Enter adds a line, Enter sends
        box.press_sequentially("Yes, every even number counts,")
        box.press("Shift+Enter")
        box.press_sequentially("negative ones too.")
        box.press("Enter")
        wait_for_text(page, "#collab-score", "100% of tests passed")
        assert "success" in page.locator("#collab-score").inner_text()
        # The scored answer is marked in the chat, its score beside it.
        final = page.locator("#collab-chat .message.bot").last.inner_text()
        assert final.startswith("Final answer · 100% of tests passed · ✓ success"), final
        assert "Final answer" not in page.locator("#collab-chat .message.bot").first.inner_text()
        code = page.locator("#collab-chat .message.bot").last.locator("pre code")
        assert "def sum_even" in code.inner_text()  # a highlighted code block...
        assert code.locator("span").count() > 0  # (highlighted: tokens in spans)
        page.locator("#collab-chat .message-row.bot-row").last.hover()
        assert page.locator("#collab-chat button[aria-label='Copy message']").count() > 0  # ...and the message copies
        assert page.locator("#collab-chat .message.bot").last.locator("button.copy_code_button").count() == 1
    (session,) = SessionStore(db).list_sessions()
    assert (session.status, session.reward, session.turns, session.mode) == ("scored", 1.0, 4, "human")
    human = SessionStore(db).turns(session.id)[2]
    assert (human["role"], human["content"]) == ("human", "Yes, every even number counts,\nnegative ones too.")
    out = home / "export.jsonl"
    subprocess.run([sys.executable, "-m", "collab_app", "export", "--db", str(db), "--format", "sweet",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    (episode,) = load_episodes(out).items
    assert episode.reward == 1.0 and episode.task.id == "sum-even"
    assert [t.role for t in episode.turns] == ["human", "agent", "human", "agent"]
    assert episode.turns[1].input and "<|im_start|>system" in episode.turns[1].input


def test_regenerate_and_like_are_recorded_and_become_a_training_pair(home):
    db = home / "collab.sqlite"
    with running_app(home, "--model", f"scripted:{home / 'script.json'}", "--tasks", str(home / "tasks.jsonl"),
                     "--db", str(db)) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-chat", QUESTION)
        wait_for_text(page, "#collab-score", "Round 1/10")  # the turn's last view: the agent is done
        page.locator("#collab-regenerate").click()  # the script's next reply is the answer
        wait_for_text(page, "#collab-score", "of tests passed")
        page.locator("#collab-chat .message-wrap button[aria-label='Like']").last.click()
        wait_until_feedback(db, ["regenerate", "like"])
        page.get_by_role("tab", name="Data").click()  # TRL's conversational format, downloaded as a person would
        page.get_by_text("TRL conversational pairs (messages)").click()
        page.locator("#export").click()
        page.locator("#export-note").filter(has_text="Exported 1 preference pair(s)").wait_for(timeout=30_000)
        link = page.locator("#export-file a").first.get_attribute("href")
        (conversational,) = [json.loads(line) for line in page.request.get(urljoin(app.url, link)).text().splitlines()]
    store = SessionStore(db)
    kinds = [e["kind"] for e in store.feedback()]
    assert kinds == ["regenerate", "like"]
    assert conversational["chosen"] == [{"role": "assistant", "content": ANSWER}]
    assert conversational["rejected"] == [{"role": "assistant", "content": QUESTION}]
    assert [m["role"] for m in conversational["prompt"]] == ["system", "user"]
    assert conversational["prompt"][1]["content"] == TASK["problem_description"]
    out = home / "pairs.jsonl"
    subprocess.run([sys.executable, "-m", "collab_app", "export", "--db", str(db), "--format", "trl",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    (pair,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert pair["rejected"] == QUESTION and pair["chosen"] == ANSWER
    assert pair["prompt"].startswith("<|im_start|>system")


def test_a_killed_app_loses_no_shown_turn(home, tiny_model_dir):
    db = home / "collab.sqlite"
    with running_app(home, "--model", str(tiny_model_dir), "--tasks", str(home / "tasks.jsonl"), "--db", str(db),
                     "--max-new-tokens", "12") as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        page.wait_for_function("document.querySelectorAll('#collab-chat .message.bot').length >= 1", timeout=60_000)
        page.wait_for_timeout(1500)  # let the streamed turn finish and be stored
        page.locator("#collab-input textarea").fill("Only integers.")
        page.locator("#collab-send").click()
        page.wait_for_function("document.querySelectorAll('#collab-chat .message.bot').length >= 2", timeout=60_000)
        page.wait_for_timeout(1500)
        shown = agent_messages(page)
        app.kill()  # SIGKILL: no shutdown hook runs
    (session,) = SessionStore(db).list_sessions()
    turns = SessionStore(db).turns(session.id)
    stored_agent = [t["content"] for t in turns if t["role"] == "agent"]
    assert "Only integers." in [t["content"] for t in turns]
    assert len(stored_agent) >= 2
    for text in shown:  # what the browser showed is what the database holds (markdown aside)
        assert any(text.strip()[:10] in s for s in stored_agent)


def test_frontend_session_shows_rendered_pages_and_a_design_score(tmp_path):
    """A design session: the reference page beside the chat, each agent page rendered in the chat,
    the final page scored (design metrics; CLIP says in one line that it is unavailable without
    weights and how to add them). The new home has no Tailwind files: the start and the page say so."""
    task = next(t for t in load_sample_tasks("frontend") if t.id == "sample-frontend-01")
    draft = ('Here is a first draft.\n<html><body class="bg-yellow-50"><h1 class="text-3xl p-8">Bakery</h1>'
             '</body></html>\nWhat should change?')
    (tmp_path / "script.json").write_text(json.dumps([draft, f"{ANSWER_MARKER}\n{task.ground_truth}"]))
    db = tmp_path / "collab.sqlite"
    with running_app(tmp_path, "--model", f"scripted:{tmp_path / 'script.json'}", "--db", str(db)) as app, \
            browser_page() as page:
        start_task(page, app.url, "Neighbourhood Bakery")
        page.locator("#collab-chat .message.bot img").first.wait_for(timeout=60_000)  # the draft, rendered
        page.locator("#reference-page img").wait_for(timeout=30_000)  # the reference beside the chat
        setup = page.locator("#frontend-setup").inner_text()  # and why it looks unstyled
        assert "Tailwind file(s)" in setup and "scripts/fetch_web_assets.sh" in setup
        assert "collab-rl: Tailwind file(s)" in app.log.read_text()  # said at start too
        page.locator("#draft-page img").wait_for(timeout=30_000)  # and the agent's latest page
        page.locator("#collab-input textarea").fill("Add the header with the logo and the navigation.")
        page.locator("#collab-send").click()
        wait_for_text(page, "#collab-score", "design:", timeout=90_000)
        score = page.locator("#collab-score").inner_text()
        assert "CLIP: not available" in score and "design: 1.000" in score  # the reference itself: a perfect match
        clip_line = next(line for line in score.splitlines() if "CLIP" in line)
        assert "COLLAB_CLIP_WEIGHTS" in clip_line and len(clip_line) < 200
        shown = page.evaluate("[...document.querySelectorAll('#collab-chat .message.bot img')].map(i => i.src)")
        assert len(set(shown)) == 2  # both of the agent's pages, rendered in the chat
        # The Data tab's replay shows the same dialogue with both rendered pages and the result in words.
        page.get_by_role("tab", name="Data").click()
        page.locator("#sessions-table .cell-wrap:visible").filter(has_text="frontend").first.click()
        wait_for_text(page, "#replay-summary", "Reward: 1.000")
        expect(page.locator("#replay-chat .message.bot img")).to_have_count(2)
        assert "Add the header with the logo" in page.locator("#replay-chat").inner_text()
    (session,) = SessionStore(db).list_sessions()
    assert (session.status, session.reward, session.task_kind) == ("scored", 1.0, "frontend")
    agent_turns = [t for t in SessionStore(db).turns(session.id) if t["role"] == "agent"]
    for turn in agent_turns:  # every page shown is kept as a file, referenced by hash
        assert SessionStore(db).render_path(turn["render_hash"]).is_file()
