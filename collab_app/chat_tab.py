"""Chat tab: a plain streamed conversation with the current agent model."""

from __future__ import annotations

import threading

import gradio as gr

from collab_app.actor import ActorSlot
from collab_app.context import AppContext
from collab_app.messages import message_text, to_model_messages
from collab_app.notices import notice_box, reports_to
from collab_app.session import RESAMPLE_TEMPERATURE, fresh_seed
from simulators.llm import GenerationConfig, ModelError

SYSTEM_PROMPT = "You are a helpful assistant for programming and web design. Answer concisely."


def stream_reply(actor: ActorSlot, history: list[dict], max_new_tokens: int, sampled: bool = False):
    """Append an assistant message to ``history`` and stream into it; errors become the message.
    ``sampled``: another reply to the same messages (retry), so sampled with a new seed."""
    history = history + [{"role": "assistant", "content": ""}]
    cancel = threading.Event()
    try:
        model = actor.get()
        messages = to_model_messages(history[:-1], SYSTEM_PROMPT)
        config = (GenerationConfig(max_new_tokens=max_new_tokens, temperature=RESAMPLE_TEMPERATURE, seed=fresh_seed())
                  if sampled else GenerationConfig(max_new_tokens=max_new_tokens))
        for delta in model.stream_chat(messages, config, cancel):
            history[-1]["content"] += delta
            yield history
        if not history[-1]["content"].strip():
            history[-1]["content"] = "(the model returned an empty reply)"
            yield history
    except ModelError as exc:
        history[-1]["content"] = f"⚠ Model error: {exc}"
        yield history
    finally:
        cancel.set()  # also reached when the Stop button closes this generator


def build_chat_tab(ctx: AppContext) -> None:
    chatbot = gr.Chatbot(label="Agent", height=480, elem_id="chat-chatbot", editable="user")
    notice = notice_box("chat-notice")
    with gr.Row():
        textbox = gr.Textbox(placeholder="Message the agent…", show_label=False, scale=8,
                             elem_id="chat-input", max_lines=12)
        send = gr.Button("Send", variant="primary", scale=0, min_width=80, elem_id="chat-send")
        stop = gr.Button("Stop", scale=0, min_width=80, elem_id="chat-stop")
    clear = gr.ClearButton([chatbot, textbox, notice], value="New conversation", size="sm", elem_id="chat-clear")

    @reports_to(notice)
    def send_message(text: str, history: list[dict]):
        """The person's message at once, then the reply streamed after it."""
        history = history + [{"role": "user", "content": ctx.person_message(text)}]
        yield "", history, ""
        for shown in stream_reply(ctx.actor, history, ctx.config.max_new_tokens):
            yield gr.update(), shown, ""

    def retry(history: list[dict], data: gr.RetryData):
        """Chatbot's retry button: keep the person's message (at ``data.index``), drop the reply, answer again."""
        yield from stream_reply(ctx.actor, history[: data.index + 1], ctx.config.max_new_tokens, sampled=True)

    def undo(history: list[dict], data: gr.UndoData):
        """Chatbot's undo button: take back the last message and its reply; the text returns to the box."""
        return message_text(history[data.index]["content"]), history[: data.index]

    def edit(history: list[dict], data: gr.EditData):
        """An edited message of the person's: what followed it is dropped and the agent answers again."""
        history = history[: data.index] + [{"role": "user", "content": message_text(data.value)}]
        yield from stream_reply(ctx.actor, history, ctx.config.max_new_tokens)

    events = [trigger(send_message, [textbox, chatbot], [textbox, chatbot, notice], api_name=name)
              for trigger, name in ((textbox.submit, "chat"), (send.click, False))]
    events += [chatbot.retry(retry, chatbot, chatbot), chatbot.edit(edit, chatbot, chatbot)]
    chatbot.undo(undo, chatbot, [textbox, chatbot])
    stop.click(None, cancels=events)
    clear.click(None, cancels=events)
