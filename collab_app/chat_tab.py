"""Chat tab: a plain streamed conversation with the current agent model."""

from __future__ import annotations

import threading

import gradio as gr

from collab_app.actor import ActorSlot
from collab_app.context import AppContext
from collab_app.messages import to_model_messages
from simulators.llm import GenerationConfig, ModelError

SYSTEM_PROMPT = "You are a helpful assistant for programming and web design. Answer concisely."


def stream_reply(actor: ActorSlot, history: list[dict], max_new_tokens: int):
    """Append an assistant message to ``history`` and stream into it; errors become the message."""
    history = history + [{"role": "assistant", "content": ""}]
    cancel = threading.Event()
    try:
        model = actor.get()
        messages = to_model_messages(history[:-1], SYSTEM_PROMPT)
        for delta in model.stream_chat(messages, GenerationConfig(max_new_tokens=max_new_tokens), cancel):
            history[-1]["content"] += delta
            yield history
        if not history[-1]["content"].strip():
            history[-1]["content"] = "(the model returned an empty reply)"
            yield history
    except ModelError as exc:
        history[-1]["content"] = f"⚠️ Model error: {exc}"
        yield history
    finally:
        cancel.set()  # also reached when the Stop button closes this generator


def build_chat_tab(ctx: AppContext) -> None:
    chatbot = gr.Chatbot(label="Agent", height=480, elem_id="chat-chatbot")
    with gr.Row():
        textbox = gr.Textbox(placeholder="Message the agent…", show_label=False, scale=8,
                             elem_id="chat-input", max_lines=12)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        stop = gr.Button("Stop", scale=1, elem_id="chat-stop")
    clear = gr.Button("New conversation", size="sm")

    def add_user_message(text: str, history: list[dict]):
        return "", history + [{"role": "user", "content": ctx.person_message(text)}]

    def respond(history: list[dict]):
        yield from stream_reply(ctx.actor, history, ctx.config.max_new_tokens)

    events = [
        trigger(add_user_message, [textbox, chatbot], [textbox, chatbot], queue=False)
        .success(respond, chatbot, chatbot, api_name="chat")
        for trigger in (textbox.submit, send.click)
    ]
    stop.click(None, cancels=events)
    clear.click(lambda: [], None, chatbot, queue=False)
