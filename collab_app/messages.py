"""Gradio 6 chat messages: the bits of glue every tab needs."""

from __future__ import annotations

from typing import Any


def message_text(content: Any) -> str:
    """Plain text of a Gradio message's content.

    Gradio 6 delivers content as a list of parts (``[{"type": "text", "text": ...}, ...]``);
    older payloads and our own code use a plain string. Non-text parts (files) are skipped.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return str(content)


def to_model_messages(history: list[dict[str, Any]], system_prompt: str | None = None) -> list[dict[str, str]]:
    """Chatbot history -> model messages (role/content strings), optional system prompt first."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for message in history:
        role = message.get("role")
        if role in ("user", "assistant"):
            messages.append({"role": role, "content": message_text(message.get("content"))})
    return messages
