"""Collaborate tab: a person plays the human who holds the hidden information.

Every handler is a thin wrapper around ``LiveSession`` (the rules) and ``AppContext`` (the shared
model, store, catalogue and renderer). The chat shows one message per episode turn, so a chat
index is a turn index (like, dislike and edit events rely on it).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from collab_app.catalog import free_form_task
from collab_app.context import AppContext
from collab_app.messages import agent_markdown, message_text, score_summary
from collab_app.notices import REFUSALS, notice_box, refusal_text, reports_to, warning
from collab_app.session import LiveSession, SessionError
from simulators.llm.base import ModelError
from simulators.scoring.clip import WEIGHTS_ENV as CLIP_WEIGHTS_ENV
from simulators.tasks import TaskFileError

NO_SESSION = "Pick a task and press **Start** first."
EMPTY_CHAT = ("Pick a task on the left and press **Start**: the agent opens with its questions, and you answer "
              "as the person who knows what is wanted (the panel on the right shows what you know).")


# -- what the UI shows of a session ---------------------------------------------------------------
def chat_messages(session: LiveSession | None) -> list[dict]:
    if session is None:
        return []
    messages = []
    hashes = session.render_hashes
    turns = session.episode.turns
    # The scored answer (the agent's last turn once the session is over) is marked, its score beside it.
    scored = max((i for i, t in enumerate(turns) if t.role == "agent"), default=None) \
        if session.finished and not session.task.free_form else None
    for index, turn in enumerate(turns):
        role = "assistant" if turn.role == "agent" else "user"
        content: object = turn.content
        if turn.role == "agent":
            content = agent_markdown(turn.content, session.task.kind)
            if index == scored:
                content = f"**Final answer** · {score_summary(session.episode.scores, session.task.kind)}\n\n{content}"
            path = session.store.render_path(hashes[index]) if hashes.get(index) else None
            if path is not None:
                content = [content, {"path": str(path), "alt_text": "the agent's page, rendered"}]
        messages.append({"role": role, "content": content})
    return messages


def score_markdown(session: LiveSession | None) -> str:
    if session is None:
        return ""
    status = (f"**Round {session.episode.rounds}/10** · session `{session.session_id[:8]}` · "
              f"model `{session.agent.name}`{reply_speed(session)}")
    if not session.finished:
        return status
    scores = session.episode.scores
    if session.task.free_form:
        return status + "\n\n### Done\nRate the result below (1–5)."
    if session.task.kind == "backend":
        return status + "\n" + tests_markdown(scores, session.episode.answer)
    parts = [status, "\n### Score"]
    if "clip" in scores:
        parts.append(f"- CLIP similarity: **{scores['clip']:.3f}**")
    else:  # one line: the full reason (every place looked in) is in the server log
        parts.append(f"- CLIP: not available, so the reward is the design score. To add it, set `{CLIP_WEIGHTS_ENV}` "
                     "to the ViT-B-32 weights, or run `python -m simulators.scoring.clip --download` once online.")
    for key in ("design", "design_block_match", "design_text", "design_position", "design_color"):
        if key in scores:
            parts.append(f"- {key.replace('_', ' ')}: {scores[key]:.3f}")
    if scores.get("render_error"):
        parts.append(f"- render error: {scores['render_error']}")
    return "\n".join(parts)


def reply_speed(session: LiveSession) -> str:
    """`` · last reply 12.3 s, 41 tokens (3.3 tok/s)``: what a wait for the agent costs."""
    turns = session.episode.agent_turns
    if not turns or not turns[-1].latency_s:
        return ""
    seconds = turns[-1].latency_s
    tokenizer = getattr(session.agent, "tokenizer", None)  # local models; endpoints do not say
    if tokenizer is None:
        return f" · last reply {seconds:.1f} s"
    tokens = len(tokenizer.encode(turns[-1].content, add_special_tokens=False))
    return f" · last reply {seconds:.1f} s, {tokens} tokens ({tokens / seconds:.1f} tok/s)"


def tests_markdown(scores: dict, answer: str | None = None) -> str:
    """A backend answer's score and its hidden tests, one row each.

    Verdicts are words and DejaVu's ✓/✗ glyphs, not emoji: Debian's Chromium has no emoji font
    and would draw ✅/❌ as empty boxes."""
    verdict = "✓ success" if scores.get("success") else "✗ not solved"
    lines = [f"\n### Score: {scores.get('tests_passed', 0):.0%} of tests passed · {verdict}"]
    if scores.get("error"):  # the answer as a whole was not run: say why before the table
        lines.append(f"Not scored: **{scores['error']}**.")
    if answer and answer.count("```") % 2 and not scores.get("success"):
        lines.append("The reply ends inside an unclosed code block: it was most likely cut at the token limit "
                     "(`--max-new-tokens`), so its code is incomplete. Ask the agent for the answer again.")
    lines += ["| test | call | expected | got | verdict |", "|---|---|---|---|---|"]
    for test in scores.get("tests", []):
        got = test.get("got") if test.get("got") is not None else test.get("error")
        lines.append(f"| {test.get('name')} | `{_cell(test.get('call'))}` | {_code_cell(test.get('expected'))} | "
                     f"{_code_cell(got)} | {'✓ pass' if test.get('passed') else '✗ fail'} |")
    return "\n".join(lines)


def _code_cell(value) -> str:
    return "–" if value is None else f"`{_cell(value)}`"


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("`", "'").replace("\n", " ")[:80]


# What the status line says while a turn's slow steps run after its text is written, by task kind.
STAGE_WORDS = {("rendering", "frontend"): " · rendering the agent's page…",
               ("scoring", "backend"): " · scoring the final answer: running the hidden tests in the sandbox…",
               ("scoring", "frontend"): " · scoring the final page against the one you want…"}


def stage_words(session: LiveSession, stage: str) -> str:
    if stage == "scoring" and session.task.free_form:  # nothing to run: the person rates it
        return ""
    return STAGE_WORDS.get((stage, session.task.kind), "")


# -- the tab -----------------------------------------------------------------------------------------
def build_collaborate_tab(ctx: AppContext) -> None:
    session_state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("### Task")
            kind = gr.Radio(["any", "backend", "frontend"], value="any", label="Kind")
            task_pick = gr.Dropdown(ctx.catalog.choices(), label="Task", elem_id="task-pick",
                                    value=None, allow_custom_value=False)
            with gr.Row():
                random_btn = gr.Button("Random", size="sm")
                start_btn = gr.Button("Start", variant="primary", size="sm", elem_id="start")
            with gr.Accordion("Free-form task (no reference; you rate the result)", open=False):
                free_text = gr.Textbox(label="Describe what you want", lines=3, elem_id="free-text")
                free_kind = gr.Radio([("Python function", "backend"), ("Web page", "frontend")],
                                     value="backend", label="Kind")
                free_btn = gr.Button("Start free-form session", size="sm", elem_id="free-start")
            with gr.Accordion("Upload a ColBench task file", open=False):
                upload = gr.File(label="JSONL", file_types=[".jsonl", ".json"])
                upload_note = gr.Markdown(elem_id="upload-note")
            name = gr.Textbox(label="Your name (recorded with the session)", value="anonymous", max_lines=1)
        with gr.Column(scale=4):  # the chat is what the person reads and writes: it gets the most room
            chatbot = gr.Chatbot(label="Collaboration", height=520, editable="all", elem_id="collab-chat",
                                 buttons=["copy", "copy_all"], placeholder=EMPTY_CHAT,
                                 feedback_options=("Like", "Dislike"))
            notice = notice_box("collab-notice")
            with gr.Row():
                textbox = gr.Textbox(placeholder="Answer the agent as the human…", show_label=False, scale=8,
                                     max_lines=8, elem_id="collab-input")
                # Narrow buttons (Gradio's default min width is 160 px each): the reply box gets the room.
                send_btn = gr.Button("Send", variant="primary", scale=0, min_width=80, elem_id="collab-send")
                stop_btn = gr.Button("Stop", scale=0, min_width=80, elem_id="collab-stop")
            with gr.Row():
                regen_btn = gr.Button("Regenerate", size="sm", elem_id="collab-regenerate")
                undo_btn = gr.Button("Undo", size="sm", elem_id="collab-undo")
                suggest_btn = gr.Button("Suggest a reply", size="sm", elem_id="collab-suggest")
                autoplay_btn = gr.Button("Let the simulator play", size="sm", elem_id="collab-autoplay")
                end_btn = gr.Button("End and score", size="sm", elem_id="collab-end")
            score = gr.Markdown(elem_id="collab-score")
            with gr.Group(visible=False, elem_id="collab-rating") as rating_box:
                rating = gr.Slider(1, 5, value=3, step=1, label="Your rating")
                comment = gr.Textbox(label="Comment (optional)", max_lines=3)
                rate_btn = gr.Button("Save rating", size="sm", elem_id="collab-rate")
        with gr.Column(scale=2):
            with gr.Accordion("You are the human: what you know", open=True):
                problem = gr.Markdown(NO_SESSION)
                reference_code = gr.Code(language="python", label="Hidden reference function", visible=False,
                                         lines=12, max_lines=40, interactive=False, wrap_lines=True)
                reference_image = gr.Image(label="The page you want", visible=False, type="pil", elem_id="reference-page")
                setup_note = notice_box("frontend-setup")  # what is missing for pages to look right
            draft_image = gr.Image(label="The agent's latest page", visible=False, type="filepath", elem_id="draft-page")

    # -- handlers -------------------------------------------------------------------------------
    # Refusals (gr.Error) become the notice beside the chat: Gradio's error badge would cover it.
    reported = reports_to(notice)

    def views(session: LiveSession | None, note: str = ""):
        """Everything that depends on the session, in the order of ``session_outputs``."""
        latest = session.latest_render_path() if session else None
        # A free-form session is rated by the person, at any time (its score is the rating).
        rated = session is not None and session.task.free_form
        return (session, chat_messages(session), score_markdown(session), gr.update(visible=rated),
                gr.update(value=str(latest) if latest else None, visible=latest is not None), note)

    session_outputs = [session_state, chatbot, score, rating_box, draft_image, notice]
    start_outputs = [*session_outputs, problem, reference_code, reference_image, setup_note, task_pick]
    unchanged = (gr.update(),) * (len(start_outputs) - len(session_outputs))

    def require(session: LiveSession | None) -> LiveSession:
        if session is None:
            raise gr.Error(NO_SESSION)
        return session

    @reported
    def start(task_id, person, session, request: gr.Request):
        if not task_id:
            raise gr.Error("Pick a task first (or press Random).")
        yield from open_session(ctx.catalog.get(task_id, request.session_hash), person, session)

    @reported
    def start_free(description, task_kind, person, session):
        description = ctx.person_message(description, empty="Describe the task first.")
        yield from open_session(free_form_task(description, task_kind), person, session)

    def open_session(task, person, session):
        """A new session, then the agent's first turn (it opens with its questions)."""
        if not ctx.actor.ready:  # a first load takes seconds to minutes: say so, never a silent wait
            yield {notice: f"Loading the agent model `{ctx.actor.resolved_spec()}`… (only the first session waits)"}
        try:
            new = ctx.new_session(task, person or "anonymous", mode="free" if task.free_form else "human")
        except ModelError as exc:
            raise gr.Error(f"Model error: {exc}") from exc
        if session is not None and not session.finished:
            session.abandon()
        reference = ctx.reference_image(task) if task.kind == "frontend" and not task.free_form else None
        shows_code = task.kind == "backend" and not task.free_form
        what = "free-form, you rate the result" if task.free_form else task.kind
        yield (*views(new), f"**Task ({what}):** {task.problem_description}",
               gr.update(value=task.hidden_information if shows_code else "", visible=shows_code),
               gr.update(value=reference, visible=reference is not None),
               " ".join(map(warning, ctx.frontend_setup_warnings())) if task.kind == "frontend" else "",
               gr.update(value=None) if task.free_form else gr.update())  # no other task seems picked
        for view in agent_streams(new):
            yield (*view, *unchanged)

    def on_upload(file, task_kind, request: gr.Request):
        if file is None:
            return gr.update(), ""
        try:
            added, errors, renamed = ctx.catalog.add_upload(file, owner=request.session_hash)
        except (TaskFileError, OSError) as exc:  # named as the person knows the file, not by Gradio's temp path
            return gr.update(), warning(str(exc).replace(str(file), Path(file).name))
        note = f"Added {added} task(s)." + "".join([*(f"\n- skipped {e}" for e in errors[:20]),
                                                    *(f"\n- {r}" for r in renamed[:20])])
        return gr.update(choices=ctx.catalog.choices(task_kind, request.session_hash)), note

    @reported
    def person_sends(text, session):
        session = require(session)
        text = ctx.person_message(text)
        session.human_says(text)
        yield "", *views(session)
        for view in agent_streams(session):
            yield gr.update(), *view  # the box is the person's again: keep what they type meanwhile

    def agent_streams(session, stream=None):
        """Stream an agent turn into the chat; errors end as a notice, never a frozen UI."""
        if session is None or (stream is None and session.expecting != "agent"):
            yield views(session)
            return
        base, (score, *rest) = chat_messages(session), views(session)[2:]
        note = ""
        try:
            for view in stream or session.agent_replies():
                if not view.done:  # the text so far, and what takes time now (never a silent wait)
                    yield (session, base + [{"role": "assistant", "content": view.text}],
                           score + stage_words(session, view.stage), *rest)
                elif view.render_error:
                    note = warning(f"The agent's page did not render: {view.render_error}")
        except (ModelError, SessionError) as exc:
            note = warning(str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed turn must leave the session usable
            note = warning(f"The agent's turn failed: {exc}")
        yield views(session, note)

    @reported
    def regenerate(session):
        session = require(session)
        if session.replying:
            raise gr.Error("The agent is replying now; press Stop first to regenerate.")
        if session.expecting == "agent":  # a failed or stopped turn: try again
            yield from agent_streams(session, session.agent_replies(session.resampling_config()))
            return
        if session.episode.turns[-1].role != "agent":
            raise gr.Error("There is no agent reply to regenerate.")
        yield from agent_streams(session, session.regenerate())

    @reported
    def undo(session):
        session = require(session)
        text = session.undo()
        return text, *views(session)

    @reported
    def suggest(session):
        session = require(session)
        try:
            return session.suggest_reply(ctx.simulator()), ""
        except ModelError as exc:
            raise gr.Error(f"Simulator error: {exc}") from exc

    @reported
    def autoplay(session):
        """Agent and simulator alternate until the episode ends."""
        session = require(session)
        if session.task.free_form:
            raise gr.Error("The simulator knows nothing of a free-form task; you play the human here.")
        simulator = ctx.simulator()
        while not session.finished:
            if session.expecting == "human":
                try:
                    session.human_says(session.suggest_reply(simulator))
                except ModelError as exc:
                    yield views(session, warning(f"Simulator error: {exc}"))
                    return
            turns_before = len(session.episode.turns)
            yield from agent_streams(session)
            if len(session.episode.turns) == turns_before:  # the agent's turn failed: its notice stays
                return
        yield views(session)

    @reported
    def end(session):
        session = require(session)
        session.end()
        return views(session)

    @reported
    def on_like(session, data: gr.LikeData):
        session = require(session)
        session.vote(data.index if isinstance(data.index, int) else data.index[0], bool(data.liked))
        return ""

    @reported
    def on_edit(session, data: gr.EditData):
        session = require(session)
        index = data.index if isinstance(data.index, int) else data.index[0]
        try:
            text = ctx.person_message(message_text(data.value), empty="An edited message cannot be empty.")
            session.edit(index, text)
        except REFUSALS as refusal:  # the chat shows the edit: put the stored text back
            yield views(session, refusal_text(refusal))
            return
        # An edit of the person's own message asks the agent again: it answers the edited text.
        yield from agent_streams(session)

    @reported
    def rate(value, note, session):
        require(session).rate(int(value), note or "")
        return "Rating saved."

    # Each event that makes the agent speak streams its turn itself (no chained step): a refusal
    # is a notice, not an exception, so a chain could not tell it from success.
    turn_events = [
        start_btn.click(start, [task_pick, name, session_state], start_outputs),
        free_btn.click(start_free, [free_text, free_kind, name, session_state], start_outputs),
        *[trigger(person_sends, [textbox, session_state], [textbox, *session_outputs])
          for trigger in (textbox.submit, send_btn.click)],
        regen_btn.click(regenerate, session_state, session_outputs),
        autoplay_btn.click(autoplay, session_state, session_outputs),
        chatbot.edit(on_edit, session_state, session_outputs),
    ]
    random_btn.click(reported(ctx.random_task), kind, [task_pick, notice])
    kind.change(ctx.task_choices, kind, task_pick)
    upload.upload(on_upload, [upload, kind], [task_pick, upload_note])
    stop_btn.click(lambda s: s and s.stop(), session_state, None, cancels=turn_events)
    undo_btn.click(undo, session_state, [textbox, *session_outputs])
    suggest_btn.click(suggest, session_state, [textbox, notice])
    end_btn.click(end, session_state, session_outputs)
    chatbot.like(on_like, session_state, notice)
    rate_btn.click(rate, [rating, comment, session_state], notice)
