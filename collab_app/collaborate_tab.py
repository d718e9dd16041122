"""Collaborate tab: a person plays the human who holds the hidden information.

Every handler is a thin wrapper around ``LiveSession`` (the rules) and ``AppContext`` (the shared
model, store, catalogue and renderer). The chat shows one message per episode turn, so a chat
index is a turn index (like, dislike and edit events rely on it).
"""

from __future__ import annotations

import gradio as gr

from collab_app.catalog import free_form_task
from collab_app.context import AppContext
from collab_app.messages import agent_markdown, message_text
from collab_app.session import LiveSession, SessionError
from simulators.llm.base import ModelError
from simulators.tasks import TaskFileError

NO_SESSION = "Pick a task and press **Start** first."


# -- what the UI shows of a session ---------------------------------------------------------------
def chat_messages(session: LiveSession | None) -> list[dict]:
    if session is None:
        return []
    messages = []
    hashes = session.render_hashes
    for index, turn in enumerate(session.episode.turns):
        role = "assistant" if turn.role == "agent" else "user"
        content: object = turn.content
        if turn.role == "agent":
            content = agent_markdown(turn.content, session.task.kind)
            path = session.store.render_path(hashes[index]) if hashes.get(index) else None
            if path is not None:
                content = [content, {"path": str(path), "alt_text": "the agent's page, rendered"}]
        messages.append({"role": role, "content": content})
    return messages


def score_markdown(session: LiveSession | None) -> str:
    if session is None:
        return ""
    status = f"**Round {session.episode.rounds}/10** · session `{session.session_id[:8]}` · model `{session.agent.name}`"
    if not session.finished:
        return status
    scores = session.episode.scores
    if session.task.free_form:
        return status + "\n\n### Done\nRate the result below (1–5)."
    if session.task.kind == "backend":
        lines = [status, f"\n### Score: {scores.get('tests_passed', 0):.0%} of tests passed "
                         f"{'✅ success' if scores.get('success') else '❌'}",
                 "| test | call | expected | got | |", "|---|---|---|---|---|"]
        for test in scores.get("tests", []):
            lines.append(f"| {test.get('name')} | `{_cell(test.get('call'))}` | `{_cell(test.get('expected'))}` | "
                         f"`{_cell(test.get('got') or test.get('error'))}` | {'✅' if test.get('passed') else '❌'} |")
        return "\n".join(lines)
    parts = [status, "\n### Score"]
    if "clip" in scores:
        parts.append(f"- CLIP similarity: **{scores['clip']:.3f}**")
    else:
        parts.append(f"- CLIP: not available ({scores.get('clip_unavailable', 'no weights')})")
    for key in ("design", "design_block_match", "design_text", "design_position", "design_color"):
        if key in scores:
            parts.append(f"- {key.replace('_', ' ')}: {scores[key]:.3f}")
    if scores.get("render_error"):
        parts.append(f"- render error: {scores['render_error']}")
    return "\n".join(parts)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("`", "'").replace("\n", " ")[:80]


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
                free_btn = gr.Button("Start free-form session", size="sm")
            with gr.Accordion("Upload a ColBench task file", open=False):
                upload = gr.File(label="JSONL", file_types=[".jsonl", ".json"])
                upload_note = gr.Markdown()
            name = gr.Textbox(label="Your name (recorded with the session)", value="anonymous", max_lines=1)
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Collaboration", height=520, editable="all", elem_id="collab-chat",
                                 feedback_options=("Like", "Dislike"))
            with gr.Row():
                textbox = gr.Textbox(placeholder="Answer the agent as the human…", show_label=False, scale=8,
                                     max_lines=8, elem_id="collab-input")
                send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="collab-send")
                stop_btn = gr.Button("Stop", scale=1)
            with gr.Row():
                regen_btn = gr.Button("Regenerate", size="sm", elem_id="collab-regenerate")
                undo_btn = gr.Button("Undo", size="sm")
                suggest_btn = gr.Button("Suggest a reply", size="sm", elem_id="collab-suggest")
                autoplay_btn = gr.Button("Let the simulator play", size="sm", elem_id="collab-autoplay")
            score = gr.Markdown(elem_id="collab-score")
            with gr.Group(visible=False) as rating_box:
                rating = gr.Slider(1, 5, value=3, step=1, label="Your rating")
                comment = gr.Textbox(label="Comment (optional)", max_lines=3)
                rate_btn = gr.Button("Save rating", size="sm")
        with gr.Column(scale=2):
            with gr.Accordion("You are the human: what you know", open=True):
                problem = gr.Markdown(NO_SESSION)
                reference_code = gr.Code(language="python", label="Hidden reference function", visible=False,
                                         lines=12, max_lines=40, interactive=False)
                reference_image = gr.Image(label="The page you want", visible=False, type="pil", elem_id="reference-page")
            draft_image = gr.Image(label="The agent's latest page", visible=False, type="filepath", elem_id="draft-page")

    # -- handlers -------------------------------------------------------------------------------
    def views(session: LiveSession | None):
        """Everything that depends on the session, in the order of ``session_outputs``."""
        finished = session is not None and session.finished
        latest = session.latest_render_path() if session else None
        return (session, chat_messages(session), score_markdown(session),
                gr.update(visible=bool(finished and session.task.free_form)),
                gr.update(value=str(latest) if latest else None, visible=latest is not None))

    session_outputs = [session_state, chatbot, score, rating_box, draft_image]

    def start(task_id, person, session):
        if not task_id:
            raise gr.Error("Pick a task first (or press Random).")
        return open_session(ctx.catalog.get(task_id), person, session)

    def start_free(description, task_kind, person, session):
        description = ctx.person_message(description, empty="Describe the task first.")
        return open_session(free_form_task(description, task_kind), person, session)

    def open_session(task, person, session):
        if session is not None and not session.finished:
            session.abandon()
        try:
            session = ctx.new_session(task, person or "anonymous", mode="free" if task.free_form else "human")
        except ModelError as exc:
            raise gr.Error(f"Model error: {exc}") from exc
        reference = ctx.reference_image(task) if task.kind == "frontend" and not task.free_form else None
        shows_code = task.kind == "backend" and not task.free_form
        return (*views(session), f"**Task ({task.kind}):** {task.problem_description}",
                gr.update(value=task.hidden_information if shows_code else "", visible=shows_code),
                gr.update(value=reference, visible=reference is not None))

    def pick_random(task_kind):
        try:
            return ctx.catalog.random(task_kind).id
        except KeyError as exc:
            raise gr.Error(str(exc)) from exc

    def filter_tasks(task_kind):
        return gr.update(choices=ctx.catalog.choices(task_kind), value=None)

    def on_upload(file, task_kind):
        if file is None:
            return gr.update(), ""
        try:
            added, errors = ctx.catalog.add_upload(file)
        except (TaskFileError, OSError) as exc:
            return gr.update(), f"⚠️ {exc}"
        note = f"Added {added} task(s)." + ("".join(f"\n- skipped {e}" for e in errors[:20]))
        return gr.update(choices=ctx.catalog.choices(task_kind)), note

    def person_sends(text, session):
        if session is None:
            raise gr.Error(NO_SESSION)
        text = ctx.person_message(text)
        try:
            session.human_says(text)
        except SessionError as exc:
            raise gr.Error(str(exc)) from exc
        return "", *views(session)

    def agent_streams(session, stream=None):
        """Stream an agent turn into the chat; errors end as a notice, never a frozen UI."""
        if session is None or (stream is None and session.expecting != "agent"):
            yield views(session)
            return
        base, rest = chat_messages(session), views(session)[2:]
        try:
            for view in stream or session.agent_replies():
                if not view.done:
                    yield (session, base + [{"role": "assistant", "content": view.text}], *rest)
                elif view.render_error:
                    gr.Warning(f"The agent's page did not render: {view.render_error}")
        except (ModelError, SessionError) as exc:
            gr.Warning(str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed turn must leave the session usable
            gr.Warning(f"The agent's turn failed: {exc}")
        yield views(session)

    def regenerate(session):
        if session is None:
            raise gr.Error(NO_SESSION)
        if session.episode.turns[-1].role != "agent":
            raise gr.Error("There is no agent reply to regenerate.")
        yield from agent_streams(session, session.regenerate())

    def undo(session):
        if session is None:
            raise gr.Error(NO_SESSION)
        try:
            session.undo()
        except SessionError as exc:
            raise gr.Error(str(exc)) from exc
        return views(session)

    def suggest(session):
        if session is None:
            raise gr.Error(NO_SESSION)
        try:
            return session.suggest_reply(ctx.simulator())
        except (SessionError, ModelError) as exc:
            raise gr.Error(str(exc)) from exc

    def autoplay(session):
        """Agent and simulator alternate until the episode ends."""
        if session is None:
            raise gr.Error(NO_SESSION)
        if session.task.free_form:
            raise gr.Error("The simulator knows nothing of a free-form task; you play the human here.")
        simulator = ctx.simulator()
        while not session.finished:
            if session.expecting == "human":
                try:
                    session.human_says(session.suggest_reply(simulator))
                except ModelError as exc:
                    gr.Warning(f"Simulator error: {exc}")
                    break
            turns_before = len(session.episode.turns)
            yield from agent_streams(session)
            if len(session.episode.turns) == turns_before:  # the agent's turn failed: stop here
                break
        yield views(session)

    def on_like(session, data: gr.LikeData):
        if session is None:
            return
        try:
            session.vote(data.index if isinstance(data.index, int) else data.index[0], bool(data.liked))
        except SessionError as exc:
            gr.Warning(str(exc))

    def on_edit(session, data: gr.EditData):
        if session is None:
            raise gr.Error(NO_SESSION)
        index = data.index if isinstance(data.index, int) else data.index[0]
        text = ctx.person_message(message_text(data.value), empty="An edited message cannot be empty.")
        try:
            session.edit(index, text)
        except SessionError as exc:
            raise gr.Error(str(exc)) from exc
        return views(session)

    def rate(value, note, session):
        if session is None:
            raise gr.Error(NO_SESSION)
        session.rate(int(value), note or "")
        gr.Info("Rating saved.")

    start_outputs = [*session_outputs, problem, reference_code, reference_image]
    # The agent speaks first (it opens with its questions), so every start chains its first turn.
    turn_events = [
        start_btn.click(start, [task_pick, name, session_state], start_outputs)
        .success(agent_streams, session_state, session_outputs),
        free_btn.click(start_free, [free_text, free_kind, name, session_state], start_outputs)
        .success(agent_streams, session_state, session_outputs),
    ]
    random_btn.click(pick_random, kind, task_pick)
    kind.change(filter_tasks, kind, task_pick)
    upload.upload(on_upload, [upload, kind], [task_pick, upload_note])
    turn_events += [
        trigger(person_sends, [textbox, session_state], [textbox, *session_outputs])
        .success(agent_streams, session_state, session_outputs)
        for trigger in (textbox.submit, send_btn.click)
    ]
    turn_events.append(regen_btn.click(regenerate, session_state, session_outputs))
    turn_events.append(autoplay_btn.click(autoplay, session_state, session_outputs))
    stop_btn.click(lambda s: s and s.stop(), session_state, None, cancels=turn_events)
    undo_btn.click(undo, session_state, session_outputs)
    suggest_btn.click(suggest, session_state, textbox)
    chatbot.like(on_like, session_state, None)
    chatbot.edit(on_edit, session_state, session_outputs)
    rate_btn.click(rate, [rating, comment, session_state], None)
