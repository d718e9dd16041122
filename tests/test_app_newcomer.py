"""What a new user hits first (issue 14's screenshot pass), in the real app and a real browser:
empty views say what to do, and the Data tab's typed filters do something and bind the export."""

from __future__ import annotations

import pytest
from app_process import browser_page, start_task, wait_for_text
from playwright.sync_api import expect
from test_app_browser import ANSWER
from test_app_collaborate import scripted_app
from test_app_results import WRONG

from simulators.domain import ANSWER_MARKER

pytestmark = pytest.mark.slow


def test_empty_views_say_what_they_are_for_and_what_to_do(tmp_path):
    with scripted_app(tmp_path, [ANSWER]) as app, browser_page() as page:
        page.goto(app.url, wait_until="load")
        wait_for_text(page, "#collab-chat", "press Start: the agent opens with its questions")
        page.get_by_role("tab", name="Chat").click()
        wait_for_text(page, "#chat-chatbot", "A plain conversation with the agent model")
        assert "Collaborate" in page.locator("#chat-chatbot").inner_text()  # where task work happens instead
        page.get_by_role("tab", name="Data").click()
        wait_for_text(page, "#replay-chat", "Click a session in the table above to replay it")
        page.get_by_role("tab", name="Train").click()
        wait_for_text(page, "#train-versions-note", "No trained version yet")
        assert "a promoted version serves the apps started with --model current" in page.locator(
            "#train-versions-note").inner_text()  # this app's --model is a script, not the registry's version
        expect(page.locator("#train-curves")).to_be_hidden()  # no empty picture frame before a run


def test_the_data_tabs_typed_filters_apply_on_enter_and_the_export_follows_them(tmp_path):
    with scripted_app(tmp_path, [WRONG, ANSWER]) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-score", "0% of tests passed")
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-score", "100% of tests passed")
        page.get_by_role("tab", name="Data").click()
        rows = page.locator("#sessions-table .cell-wrap:visible").filter(has_text="scored")
        expect(rows).to_have_count(2)

        page.locator("#data-min-reward input").fill("0.5")
        page.locator("#data-min-reward input").press("Enter")  # no Refresh needed
        expect(rows).to_have_count(1)
        page.locator("#export").click()
        wait_for_text(page, "#export-note", "Exported 1 session(s) matching minimum reward 0.5")

        page.locator("#data-model").get_by_role("textbox").fill("nobody")
        page.locator("#data-model").get_by_role("textbox").press("Enter")
        expect(rows).to_have_count(0)
        page.locator("#export").click()
        wait_for_text(page, "#export-note", "No stored session matching model nobody, minimum reward 0.5")
        page.locator("#export-file a").wait_for(state="detached")


def test_a_bad_task_upload_is_named_as_uploaded_with_its_line_and_a_glyph_the_browser_has(tmp_path):
    (tmp_path / "my-tasks.jsonl").write_text('{"problem_description": "half a line\n')
    with scripted_app(tmp_path, [ANSWER]) as app, browser_page() as page:
        page.goto(app.url, wait_until="load")
        page.wait_for_selector("#start", timeout=60_000)
        page.get_by_text("Upload a ColBench task file").click()
        page.locator("input[type=file]").set_input_files(str(tmp_path / "my-tasks.jsonl"))
        wait_for_text(page, "#upload-note", "my-tasks.jsonl")
        note = page.locator("#upload-note").inner_text()
        assert note.startswith("⚠ my-tasks.jsonl") and "my-tasks.jsonl:1" in note, note  # the line to fix
        assert "/" not in note.split("my-tasks.jsonl")[0]  # not Gradio's temporary copy's path
        assert "\ufe0f" not in note  # the emoji form of ⚠ is a box without an emoji font (Debian's Chromium)


def test_a_replay_opens_at_its_first_message_and_gives_its_result_in_words(tmp_path):
    notes = "".join(f"    # step {i}: a line of the agent's long answer\n" for i in range(40))
    long_answer = f"{ANSWER_MARKER}\n```python\ndef sum_even(xs):\n{notes}    return sum(x for x in xs if x % 2 == 0)\n```"
    with scripted_app(tmp_path, [long_answer]) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-score", "100% of tests passed")
        page.get_by_role("tab", name="Data").click()
        page.locator("#sessions-table .cell-wrap:visible").filter(has_text="scored").first.click()
        wait_for_text(page, "#replay-summary", "Reward: 1.000 · 100% of tests passed · ✓ success")
        assert "sandbox" not in page.locator("#replay-summary").inner_text()  # not the scorer's raw dict
        page.locator("#replay-chat .message.bot pre code").wait_for()  # the long answer is drawn
        # The chat overflows its box and still shows its first message: the task, not the answer's end.
        scrolled = page.evaluate("""() => [...document.querySelectorAll('#replay-chat *')]
            .filter(e => e.scrollHeight > e.clientHeight + 50 && /auto|scroll/.test(getComputedStyle(e).overflowY))
            .map(e => e.scrollTop)""")
        assert scrolled and all(top == 0 for top in scrolled), scrolled
        first = page.locator("#replay-chat .message").first.bounding_box()
        chat = page.locator("#replay-chat").bounding_box()
        assert chat["y"] <= first["y"] < chat["y"] + chat["height"]
