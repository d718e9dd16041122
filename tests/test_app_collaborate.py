"""The Collaborate tab as a new user meets it (issue 18), in the real app and a real browser.

A scripted agent where what it says matters (its answer must be right), the tiny random model
where sampling matters. Waits are on page or database conditions, never on fixed sleeps.
"""

from __future__ import annotations

import json
import time

import pytest
from app_process import browser_page, running_app, start_task, wait_for_text
from test_app_browser import ANSWER, QUESTION, TASK

from simulators.llm import load_model
from simulators.store import SessionStore
from simulators.store.preferences import preference_pairs

pytestmark = pytest.mark.slow

RIGHT_CODE = "def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)"
# Gradio's status tracker shows this over every output of an event whose handler raised.
ERROR_BADGE = "[data-testid='status-tracker'] .error"


def scripted_app(home, replies: list[str], *args: str, holds=None):
    (home / "tasks.jsonl").write_text(json.dumps(TASK) + "\n")
    (home / "script.json").write_text(json.dumps(replies))
    return running_app(home, "--model", f"scripted:{home / 'script.json'}", "--tasks", str(home / "tasks.jsonl"),
                       "--db", str(home / "collab.sqlite"), *args, holds=holds)


def wait_until(condition, what: str, timeout: float = 60):
    """Poll ``condition()`` (a database query) until it returns something truthy."""
    deadline = time.time() + timeout
    while not (result := condition()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


def only_session(db):
    (session,) = SessionStore(db).list_sessions()
    return session


def send(page, text: str) -> None:
    page.locator("#collab-input textarea").fill(text)
    page.locator("#collab-send").click()


def test_editing_your_own_message_gets_a_new_agent_reply_and_is_recorded(tmp_path):
    db = tmp_path / "collab.sqlite"
    with scripted_app(tmp_path, [QUESTION, "Only the positive ones, then?", ANSWER]) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-chat", QUESTION)
        send(page, "Only positive numbers.")
        wait_for_text(page, "#collab-chat .message.bot", "Only the positive ones")
        wait_for_text(page, "#collab-score", "Round 2/10")  # the turn's last view: the agent is done
        mine = page.locator("#collab-chat .message-row.user-row").last  # the person's last message
        mine.hover()
        mine.locator("xpath=following-sibling::div[contains(@class,'message-buttons')][1]") \
            .locator("button[aria-label='Edit']").click()
        page.locator("#collab-chat textarea").fill("Negative even numbers count too.")
        page.locator("#collab-chat button[aria-label='Submit']").click()
        # The agent answers the edited message: the script's next reply is the right answer.
        wait_for_text(page, "#collab-score", "100% of tests passed")
        assert "Only the positive ones" not in page.locator("#collab-chat").inner_text()
    session = only_session(db)
    turns = SessionStore(db).turns(session.id)
    assert [(t["role"], t["content"]) for t in turns[2:]] == [("human", "Negative even numbers count too."),
                                                               ("agent", ANSWER)]
    (edit,) = SessionStore(db).feedback()
    assert (edit["kind"], edit["turn_idx"], edit["before"], edit["after"], edit["payload"]["role"]) == \
        ("edit", 2, "Only positive numbers.", "Negative even numbers count too.", "human")
    assert (session.status, session.reward) == ("scored", 1.0)


def test_a_refusal_is_a_notice_beside_the_chat_which_stays_readable(tmp_path):
    with scripted_app(tmp_path, [QUESTION]) as app, browser_page() as page:
        page.goto(app.url, wait_until="load")
        page.locator("#collab-send").click()  # before any session
        wait_for_text(page, "#collab-notice", "Pick a task and press")
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-chat", QUESTION)
        wait_for_text(page, "#collab-score", "Round 1/10")
        page.locator("#collab-send").click()  # an empty message
        wait_for_text(page, "#collab-notice", "Type a message first.")
        for part in ("#collab-chat", "#collab-input", "#collab-score"):
            assert page.locator(f"{part} {ERROR_BADGE}").count() == 0, part
        assert QUESTION in page.locator("#collab-chat").inner_text()
        send(page, "Negative ones too.")  # the next action clears the notice
        page.locator("#collab-notice").filter(has_text="Type a message").wait_for(state="detached")


def test_a_message_with_a_lone_surrogate_is_stored_and_the_session_goes_on(tmp_path):
    """Issue 17, class 8: a lone surrogate (valid in JSON, not in UTF-8) broke the session for good."""
    db = tmp_path / "collab.sqlite"
    with scripted_app(tmp_path, [QUESTION, "And the odd ones?", ANSWER]) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-score", "Round 1/10")
        # Typed through the page's own JavaScript: a JS string may hold a lone surrogate.
        page.locator("#collab-input textarea").evaluate(
            "box => { box.value = 'Only even ones \\ud800 please'; box.dispatchEvent(new Event('input')); }")
        page.locator("#collab-send").click()
        wait_for_text(page, "#collab-chat .message.bot", "And the odd ones?")
        wait_for_text(page, "#collab-score", "Round 2/10")
        send(page, "No, only the even ones.")
        wait_for_text(page, "#collab-score", "100% of tests passed")
        assert page.locator(f"#collab-chat {ERROR_BADGE}").count() == 0
    turns = SessionStore(db).turns(only_session(db).id)
    assert [t["content"] for t in turns[1:] if t["role"] == "human"] == ["Only even ones \ufffd please",
                                                                          "No, only the even ones."]
    assert only_session(db).reward == 1.0


def test_an_uploaded_task_is_offered_to_its_uploader_only(tmp_path):
    """Issue 17, class 8: an upload was every client's task, hidden reference included."""
    secret = {**TASK, "id": "uploaded-secret", "ground_truth": "def mul_odd(xs):\n    return 0",
              "problem_description": "Multiply the odd numbers. The signature of the function is: def mul_odd(xs)"}
    (tmp_path / "upload.jsonl").write_text(json.dumps(secret) + "\n")

    def offered(page) -> str:
        """Every task the page's list offers (they render at once: one shown means all are)."""
        page.locator("#task-pick input").click()
        page.locator("#task-pick input").fill("")
        page.get_by_role("option").filter(has_text="Sum the even").first.wait_for()
        options = "\n".join(page.get_by_role("option").all_inner_texts())
        page.locator("#task-pick input").blur()  # closes the list
        return options

    with scripted_app(tmp_path, [QUESTION]) as app, browser_page() as page:
        other = page.context.browser.new_page()  # another person's page, open before and during the upload
        for each in (page, other):
            each.goto(app.url, wait_until="load")
            each.wait_for_selector("#start", timeout=60_000)
        page.get_by_text("Upload a ColBench task file").click()
        page.locator("input[type=file]").set_input_files(str(tmp_path / "upload.jsonl"))
        wait_for_text(page, "#upload-note", "Added 1 task(s).")
        assert "Multiply the odd" in offered(page)
        other.get_by_text("backend", exact=True).click()  # the other page asks the server for its list
        assert "Multiply" not in offered(other)
        other.get_by_role("button", name="Random", exact=True).click()  # a random task of the page's own list
        other.wait_for_function("document.querySelector('#task-pick input').value.startsWith('[backend]')")
        assert "Multiply" not in other.locator("#task-pick input").input_value()
        page.locator("#task-pick input").click()
        page.locator("#task-pick input").fill("Multiply the odd")
        page.get_by_role("option").filter(has_text="Multiply the odd").first.click()
        page.locator("#start").click()
        wait_for_text(page, "#collab-chat", QUESTION)
        assert "return 0" in page.locator("#collab-chat").evaluate("_ => document.body.innerText")
        page.reload(wait_until="load")  # a new browser session: the upload went with the old one
        page.wait_for_selector("#start", timeout=60_000)
        assert "Multiply" not in offered(page)
    (session,) = SessionStore(tmp_path / "collab.sqlite").list_sessions()
    assert session.task_id == "uploaded-secret"  # the session keeps its task, upload gone or not


def test_regenerate_samples_a_new_reply_with_a_new_seed(tmp_path, tiny_model_dir):
    (tmp_path / "tasks.jsonl").write_text(json.dumps(TASK) + "\n")
    db = tmp_path / "collab.sqlite"
    with running_app(tmp_path, "--model", str(tiny_model_dir), "--tasks", str(tmp_path / "tasks.jsonl"),
                     "--db", str(db), "--max-new-tokens", "16") as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        store = SessionStore(db)
        wait_until(lambda: store.list_sessions() and len(store.turns(only_session(db).id)) == 2, "the first reply")
        first = store.turns(only_session(db).id)[1]["content"]
        wait_for_text(page, "#collab-score", "Round 1/10")  # the turn's last view: the agent is done
        replies = page.locator("#collab-chat .message.bot")
        shown_first = " ".join(replies.last.inner_text().split())
        page.locator("#collab-regenerate").click()
        (event,) = wait_until(lambda: store.feedback(), "the regenerated reply")
        # The chat shows the new reply in place of the first. (Compared as shown, not by its raw
        # text: random tokens can hold markdown and line breaks that the chat renders otherwise.)
        wait_until(lambda: replies.count() == 1 and " ".join(replies.last.inner_text().split()) != shown_first,
                   "the regenerated reply in the chat")
    assert event["kind"] == "regenerate" and event["before"] == first
    assert event["after"] != first  # greedy decoding would write the same reply again
    assert event["payload"]["temperature"] > 0 and isinstance(event["payload"]["seed"], int)


def test_end_and_score_at_any_round_and_rate_a_free_form_session_at_any_time(tmp_path):
    draft = f"A first version:\n```python\n{RIGHT_CODE}\n```\nShould anything change?"
    db = tmp_path / "collab.sqlite"
    with scripted_app(tmp_path, [draft, "What should the page say?"]) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-score", "Round 1/10")  # the turn's last view: the agent is done
        page.locator("#collab-end").click()  # no answer marker: the person ends it at round 1
        wait_for_text(page, "#collab-score", "100% of tests passed")
        session = only_session(db)
        assert (session.status, session.reward, session.turns) == ("scored", 1.0, 2)

        page.get_by_text("Free-form task (no reference").click()  # the accordion
        page.locator("#free-text textarea").fill("A haiku about sorting.")
        page.locator("#free-start").click()
        wait_for_text(page, "#collab-chat", "What should the page say?")
        page.locator("#collab-rate").click()  # round 1 of 10: no need to play the rest
        wait_for_text(page, "#collab-notice", "Rating saved.")
    free = SessionStore(db).list_sessions(mode="free")[0]
    assert free.rating == 3


def tiny_app(home, model_dir, *args: str):
    (home / "tasks.jsonl").write_text(json.dumps(TASK) + "\n")
    return running_app(home, "--model", str(model_dir), "--tasks", str(home / "tasks.jsonl"),
                       "--db", str(home / "collab.sqlite"), "--max-new-tokens", "8", *args)


def agent_turns(db) -> int:
    store = SessionStore(db)
    sessions = store.list_sessions()
    return sum(t["role"] == "agent" for t in store.turns(sessions[0].id)) if sessions else 0


def test_replies_show_their_speed_undo_gives_the_text_back_and_the_layout_has_room(tmp_path, tiny_model_dir):
    db = tmp_path / "collab.sqlite"
    with tiny_app(tmp_path, tiny_model_dir) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_until(lambda: agent_turns(db) == 1, "the first reply")
        wait_for_text(page, "#collab-score", "tok/s")  # the wait, measured: seconds, tokens, tokens/s
        assert page.locator("#collab-input textarea").bounding_box()["width"] > 400
        send(page, "Only integers.")
        wait_for_text(page, "#collab-score", "Round 2/10")  # the turn's last view: the agent is done
        page.locator("#collab-undo").click()
        page.wait_for_function("document.querySelector('#collab-input textarea').value === 'Only integers.'")
        # The chat goes back to the first reply (its update may land a moment after the text box's).
        page.wait_for_function("document.querySelectorAll('#collab-chat .message.bot').length === 1")
        assert "Only integers." not in page.locator("#collab-chat").inner_text()

        page.locator("#task-pick input").click()  # sample task names end at a word, marked as cut
        page.get_by_role("option").first.wait_for()  # the list opens a moment after the click
        labels = page.get_by_role("option").all_inner_texts()
        page.keyboard.press("Escape")
        cut = [label for label in labels if label.endswith("…")]
        assert cut and all(label.endswith(" …") for label in cut)

        page.get_by_text("Free-form task (no reference").click()
        page.locator("#free-text textarea").fill("A haiku about sorting.")
        page.locator("#free-start").click()
        page.locator("#collab-score").filter(has_text="Round").wait_for()
        wait_until(lambda: len(SessionStore(db).list_sessions(mode="free")) == 1, "the free-form session")
        page.wait_for_function("document.querySelector('#task-pick input').value === ''")  # no old task shown

        page.get_by_role("tab", name="Data").click()
        header = page.locator("#sessions-table th").filter(has_text="status").first
        header.wait_for()
        assert header.bounding_box()["width"] > header.bounding_box()["height"]  # not one letter per line


def test_chat_tab_retries_undoes_and_starts_over_in_one_click(tmp_path, tiny_model_dir):
    with tiny_app(tmp_path, tiny_model_dir) as app, browser_page() as page:
        page.goto(app.url, wait_until="load")
        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat-send").click()  # an empty message: a notice, the chat stays usable
        wait_for_text(page, "#chat-notice", "Type a message first.")
        page.locator("#chat-input textarea").fill("hello")
        page.locator("#chat-send").click()
        # A bot message exists once the reply streams; the chat's buttons are disabled until it ends.
        page.locator("#chat-chatbot .message.bot").first.wait_for()
        page.locator("#chat-chatbot button[aria-label='Undo']").click()
        page.wait_for_function("document.querySelector('#chat-input textarea').value === 'hello'")
        page.wait_for_function("document.querySelectorAll('#chat-chatbot .message').length === 0")
        page.locator("#chat-send").click()
        page.locator("#chat-chatbot .message.bot").first.wait_for()
        page.locator("#chat-chatbot button[aria-label='Retry']").click()  # a new reply to the same message
        store = SessionStore(tmp_path / "collab.sqlite")
        # The retry's feedback is stored once its reply has ended: a click on "New conversation"
        # before that would race the last streamed update back into the cleared chat.
        wait_until(lambda: [e["kind"] for e in store.feedback()] == ["regenerate"], "the retry")
        page.locator("#chat-chatbot .message.bot").first.wait_for()
        assert page.locator("#chat-chatbot .message.user").count() == 1
        page.locator("#chat-clear").click()  # once
        page.wait_for_function("document.querySelectorAll('#chat-chatbot .message').length === 0")


def test_chat_tab_stores_the_conversation_its_likes_and_retries_and_a_liked_retry_is_a_pair(tmp_path, tiny_model_dir):
    db = tmp_path / "collab.sqlite"
    store = SessionStore(db)

    def chat_turns() -> list[tuple[str, str]]:
        sessions = store.list_sessions(mode="chat")
        return [(t["role"], t["content"]) for t in store.turns(sessions[0].id)] if sessions else []

    with tiny_app(tmp_path, tiny_model_dir) as app, browser_page() as page:
        page.goto(app.url, wait_until="load")
        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat-input textarea").fill("hello")
        page.locator("#chat-send").click()
        first = wait_until(lambda: (turns := chat_turns()) and len(turns) == 2 and turns, "the first reply")
        assert first[0] == ("human", "hello") and first[1][0] == "agent"
        page.locator("#chat-chatbot button[aria-label='Retry']").click()  # a new reply to the same message
        wait_until(lambda: [e["kind"] for e in store.feedback()] == ["regenerate"], "the retry")
        page.locator("#chat-chatbot button[aria-label='Like']").last.click()
        wait_until(lambda: [e["kind"] for e in store.feedback()] == ["regenerate", "like"], "the like")
        retried = chat_turns()
        assert len(retried) == 2 and retried[0] == ("human", "hello")  # the reply replaced, not appended
        page.locator("#chat-clear").click()  # a new conversation: the next message opens a new session
        page.wait_for_function("document.querySelectorAll('#chat-chatbot .message').length === 0")
        page.locator("#chat-input textarea").fill("again")
        page.locator("#chat-send").click()
        wait_until(lambda: len(store.list_sessions(mode="chat")) == 2, "the second conversation")
        page.locator("#chat-chatbot button[aria-label='Dislike']").last.wait_for()
    regenerate, like = store.feedback()
    assert (regenerate["turn_idx"], like["turn_idx"]) == (1, 1)
    assert (regenerate["before"], regenerate["after"]) == (first[1][1], retried[1][1])
    (pair,) = preference_pairs(store)
    assert (pair.source, pair.chosen, pair.rejected) == ("regenerate+like", retried[1][1], first[1][1])
    assert pair.prompt.startswith("<|im_start|>system\nYou are a helpful assistant") and "hello" in pair.prompt
    assert load_model(str(tiny_model_dir)).format_prompt(pair.messages) == pair.prompt  # conversational export
