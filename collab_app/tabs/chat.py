"""Chat tab: a plain streamed conversation with the current agent model, stored as it happens."""

from __future__ import annotations

import threading
import time

import gradio as gr

from collab_app.context import AppContext
from collab_app.messages import message_text, to_model_messages
from collab_app.model_slot import ModelSlot
from collab_app.notices import notice_box, reports_to
from collab_app.session import RESAMPLE_TEMPERATURE, fresh_seed
from simulators.domain import Task, Turn
from simulators.llm import GenerationConfig, ModelError
from simulators.prompts import load_prompt
from simulators.store import SessionStore

SYSTEM_PROMPT = load_prompt("chat")  # assets/prompts/chat.txt (simulators.prompts.agent_messages knows it too)
CHAT_NOTE = "(a Chat-tab conversation: no task and no reference)"
EMPTY_CHAT = ("A plain conversation with the agent model served now: no task, no hidden reference, no score. "
              "It is stored as a session of mode *chat*; a retried reply you then like becomes a preference pair. "
              "To work on a task as its human, use the **Collaborate** tab.")


class ChatLog:
    """A Chat-tab conversation as a stored session of mode ``chat``: no task, no score; message
    ``i`` of the chat is turn ``i``; likes, dislikes, retries and edits are its feedback, so a
    liked retry is a preference pair (``simulators.store.preferences``) as in Collaborate."""

    def __init__(self, store: SessionStore, first_message: str, model_version: str):
        task = Task(id=Task.make_id("backend", first_message, "chat"), kind="backend", source="chat",
                    problem_description=first_message, ground_truth="", hidden_information=CHAT_NOTE)
        self.store = store
        self.session_id = store.create_session(task, mode="chat", human="person:anonymous",
                                               model_version=model_version)

    def add(self, index: int, turn: Turn) -> None:
        """Message ``index`` is ``turn``; whatever followed it (undone, retried, edited) goes."""
        self.store.truncate_turns(self.session_id, keep=index)
        self.store.add_turn(self.session_id, turn)

    def keep(self, count: int) -> None:
        self.store.truncate_turns(self.session_id, keep=count)

    def feedback(self, kind: str, index: int, **fields) -> None:
        self.store.add_feedback(self.session_id, kind, turn_idx=index, **fields)


def stream_reply(actor: ModelSlot, history: list[dict], max_new_tokens: int, sampled: bool = False,
                 log: ChatLog | None = None):
    """Append an assistant message to ``history`` and stream into it; errors become the message.
    ``sampled``: another reply to the same messages (retry), so sampled with a new seed. What was
    shown is stored in ``log`` at the end, a stopped reply included."""
    history = history + [{"role": "assistant", "content": ""}]
    cancel = threading.Event()
    prompt, model_name, started = None, None, time.monotonic()
    try:
        model = actor.get()
        messages = to_model_messages(history[:-1], SYSTEM_PROMPT)
        config = (GenerationConfig(max_new_tokens=max_new_tokens, temperature=RESAMPLE_TEMPERATURE, seed=fresh_seed())
                  if sampled else GenerationConfig(max_new_tokens=max_new_tokens))
        prompt, model_name = model.format_prompt(messages), model.name
        for delta in model.stream_chat(messages, config, cancel):
            history[-1]["content"] += delta
            yield history
        if not history[-1]["content"].strip():
            history[-1]["content"] = "(the model returned an empty reply)"
            yield history
    except ModelError as exc:
        history[-1]["content"] = f"⚠ Model error: {exc}"
        prompt = None  # not the model's words: never a training example
        yield history
    finally:
        cancel.set()  # also reached when the Stop button closes this generator
        if log is not None:
            text = history[-1]["content"]
            log.add(len(history) - 1, Turn(role="agent", content=text, input=prompt, output=text if prompt else None,
                                           model=model_name, latency_s=round(time.monotonic() - started, 3)))


def build_chat_tab(ctx: AppContext) -> None:
    log_state = gr.State(None)  # this page's ChatLog, from its first message to "New conversation"
    chatbot = gr.Chatbot(label="Agent", height=480, elem_id="chat-chatbot", editable="user", buttons=["copy", "copy_all"],
                         feedback_options=("Like", "Dislike"), placeholder=EMPTY_CHAT)
    notice = notice_box("chat-notice")
    with gr.Row():
        textbox = gr.Textbox(placeholder="Message the agent…", show_label=False, scale=8,
                             elem_id="chat-input", max_lines=12)
        send = gr.Button("Send", variant="primary", scale=0, min_width=80, elem_id="chat-send")
        stop = gr.Button("Stop", scale=0, min_width=80, elem_id="chat-stop")
    clear = gr.ClearButton([chatbot, textbox, notice], value="New conversation", size="sm", elem_id="chat-clear")

    @reports_to(notice)
    def send_message(text: str, history: list[dict], log: ChatLog | None):
        """The person's message at once (stored), then the reply streamed after it."""
        text = ctx.person_message(text)
        log = log or ChatLog(ctx.store, text, ctx.actor.resolved_spec())
        log.add(len(history), Turn(role="human", content=text))
        history = history + [{"role": "user", "content": text}]
        yield "", history, "", log
        for shown in stream_reply(ctx.actor, history, ctx.config.max_new_tokens, log=log):
            yield gr.update(), shown, "", gr.update()

    def retry(history: list[dict], log: ChatLog | None, data: gr.RetryData):
        """Chatbot's retry button: keep the person's message (at ``data.index``), drop the reply, answer
        again; the discarded reply is kept as the retry's feedback (liked, the new one is preferred)."""
        replaced = history[data.index + 1] if data.index + 1 < len(history) else None
        shown = history
        for shown in stream_reply(ctx.actor, history[: data.index + 1], ctx.config.max_new_tokens,
                                  sampled=True, log=log):
            yield shown
        if log is not None and replaced is not None:
            log.feedback("regenerate", data.index + 1, before=message_text(replaced["content"]),
                         after=message_text(shown[-1]["content"]))

    def undo(history: list[dict], log: ChatLog | None, data: gr.UndoData):
        """Chatbot's undo button: take back the last message and its reply; the text returns to the box."""
        if log is not None:
            log.keep(data.index)
        return message_text(history[data.index]["content"]), history[: data.index]

    def edit(history: list[dict], log: ChatLog | None, data: gr.EditData):
        """An edited message of the person's: what followed it is dropped and the agent answers again."""
        text = message_text(data.value)
        if log is not None:
            log.feedback("edit", data.index, before=message_text(history[data.index]["content"]), after=text,
                         payload={"role": "human"})
            log.add(data.index, Turn(role="human", content=text))
        history = history[: data.index] + [{"role": "user", "content": text}]
        yield from stream_reply(ctx.actor, history, ctx.config.max_new_tokens, log=log)

    @reports_to(notice)
    def like(history: list[dict], log: ChatLog | None, data: gr.LikeData):
        index = data.index if isinstance(data.index, int) else data.index[0]
        if log is None or history[index]["role"] != "assistant":
            raise gr.Error("Only the agent's replies can be liked or disliked.")
        log.feedback("like" if data.liked else "dislike", index)
        return ""

    events = [trigger(send_message, [textbox, chatbot, log_state], [textbox, chatbot, notice, log_state],
                      api_name=name)
              for trigger, name in ((textbox.submit, "chat"), (send.click, False))]
    events += [chatbot.retry(retry, [chatbot, log_state], chatbot),
               chatbot.edit(edit, [chatbot, log_state], chatbot)]
    chatbot.undo(undo, [chatbot, log_state], [textbox, chatbot])
    chatbot.like(like, [chatbot, log_state], notice)
    stop.click(None, cancels=events)
    clear.click(lambda: None, None, log_state, cancels=events)  # the next message starts a new conversation
