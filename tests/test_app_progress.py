"""Every long action says what it is doing while it runs (issue 14), seen in a real browser.

The app runs under ``tests/held_app.py``: each slow step (loading the model, rendering a page,
scoring an answer, exporting) waits until the test creates its release file, so the test sees
the notice while the step is held, releases it, and sees the notice replaced by the result.
No sleeps: every wait is on the page.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from app_process import browser_page, free_port, running_app, start_task, wait_for_text
from test_app_browser import ANSWER, QUESTION, TASK
from test_app_collaborate import ERROR_BADGE, scripted_app, send, wait_until

from simulators.domain import ANSWER_MARKER
from simulators.tasks import load_sample_tasks

pytestmark = pytest.mark.slow


def holds_dir(tmp_path, *released: str):
    holds = tmp_path / "holds"
    holds.mkdir()
    for step in released:
        (holds / step).touch()
    return holds


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def test_the_first_model_load_and_the_scoring_are_announced_while_they_run(tmp_path):
    holds = holds_dir(tmp_path)
    with scripted_app(tmp_path, [QUESTION, ANSWER], holds=holds) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-notice", "Loading the agent model")  # the load is held: the notice stays
        assert page.locator("#collab-chat .message.bot").count() == 0
        (holds / "load").touch()
        wait_for_text(page, "#collab-chat", QUESTION)
        page.wait_for_function("!document.querySelector('#collab-notice').innerText.includes('Loading')")

        send(page, "Yes, negative even numbers count too.")
        wait_for_text(page, "#collab-score", "scoring the final answer: running the hidden tests")
        assert "of tests passed" not in text_of(page, "#collab-score")  # held: no score yet
        (holds / "score").touch()
        wait_for_text(page, "#collab-score", "100% of tests passed")
        assert "scoring the final answer" not in text_of(page, "#collab-score")


def test_rendering_the_agents_page_is_announced_while_it_runs(tmp_path):
    task = next(t for t in load_sample_tasks("frontend") if t.id == "sample-frontend-01")
    draft = '<html><body class="bg-yellow-50"><h1 class="text-3xl p-8">Bakery</h1></body></html>\nWhat should change?'
    (tmp_path / "script.json").write_text(json.dumps([draft, f"{ANSWER_MARKER}\n{task.ground_truth}"]))
    holds = holds_dir(tmp_path, "load")
    with running_app(tmp_path, "--model", f"scripted:{tmp_path / 'script.json'}",
                     "--db", str(tmp_path / "collab.sqlite"), holds=holds) as app, browser_page() as page:
        start_task(page, app.url, "Neighbourhood Bakery")
        wait_for_text(page, "#collab-score", "rendering the agent's page", timeout=90_000)
        assert page.locator("#collab-chat .message.bot img").count() == 0  # held: not rendered yet
        (holds / "render").touch()
        page.locator("#collab-chat .message.bot img").first.wait_for(timeout=60_000)
        assert "rendering the agent's page" not in text_of(page, "#collab-score")


def test_an_export_shows_its_progress_and_a_failed_one_says_why_without_a_traceback(tmp_path):
    holds = holds_dir(tmp_path, "load", "score")
    db = tmp_path / "collab.sqlite"
    with scripted_app(tmp_path, [ANSWER], holds=holds) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-score", "100% of tests passed")
        page.get_by_role("tab", name="Data").click()
        page.locator("#export").click()
        # Held after its first step: the progress line and bar stand over the download.
        wait_for_text(page, "#export-file", "Reading session 1 of 1", timeout=30_000)
        assert page.locator("#export-file [role=progressbar]").count() == 1
        assert page.locator("#export-file a").count() == 0
        (holds / "export").touch()
        wait_for_text(page, "#export-note", "Exported 1 session(s) (sweet_rl trajectory JSONL)")
        page.locator("#export-file a").first.wait_for()

        with sqlite3.connect(db) as connection:  # a row this version cannot read (an older or damaged database)
            connection.execute("UPDATE sessions SET scores_json = '{not json'")
        page.locator("#export").click()
        wait_for_text(page, "#export-note", "Export failed: session")
        note = text_of(page, "#export-note")
        assert "could not be read from the database" in note and "JSONDecodeError" in note
        assert "Traceback" not in note and page.locator(ERROR_BADGE).count() == 0
        page.locator("#export-file a").wait_for(state="detached")  # no file from the failed export

        page.locator("#sessions-table .cell-wrap:visible").filter(has_text="backend").first.click()  # its replay fails too
        wait_for_text(page, "#replay-summary", "could not be replayed")
        assert page.locator(ERROR_BADGE).count() == 0


def test_stop_stops_the_model_itself_not_only_the_page(tmp_path):
    """The reply pauses after its first word until Stop sets its cancel event: the model must then
    produce nothing more (``held_app`` counts the words it produced); the page never shows the rest.
    Without Stop the pause would last ``HOLD_LIMIT_S`` and the count be 201."""
    reply = "First, " + " ".join(f"word{i}" for i in range(200))
    holds = holds_dir(tmp_path, "load", "render", "score", "export", "stream.hold")
    with scripted_app(tmp_path, [reply], holds=holds) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-chat", "First,")
        page.locator("#collab-stop").click()
        produced = wait_until(lambda: (holds / "streamed").exists() and (holds / "streamed").read_text(),
                              "the model's stream to end")
        assert produced == "1"  # the first word only: the model stopped when asked
        assert "word0" not in page.locator("#collab-chat").inner_text()


def test_a_dead_endpoint_is_a_readable_notice_and_the_tab_stays_usable(tmp_path):
    port = free_port()  # bound and released: nothing listens there
    (tmp_path / "tasks.jsonl").write_text(json.dumps(TASK) + "\n")
    with running_app(tmp_path, "--model", f"openai:http://127.0.0.1:{port}/v1#gone", "--tasks",
                     str(tmp_path / "tasks.jsonl"), "--db", str(tmp_path / "collab.sqlite")) as app, \
            browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-notice", "unreachable", timeout=90_000)  # after its retries
        notice = page.locator("#collab-notice").inner_text()
        assert "unreachable" in notice and "Is the server running" in notice, notice
        assert "Traceback" not in notice and len(notice) < 600, notice
        for part in ("#collab-chat", "#collab-input", "#collab-score"):
            assert page.locator(f"{part} {ERROR_BADGE}").count() == 0, part
        page.locator("#collab-send").click()  # the tab still answers
        wait_for_text(page, "#collab-notice", "Type a message first.")
