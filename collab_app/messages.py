"""Gradio 6 chat messages: the bits of glue every tab needs."""

from __future__ import annotations

import re
from typing import Any

from simulators.domain import ANSWER_MARKER

# Where an agent's page starts and ends in its message (an unclosed page runs to the end).
_PAGE_START = re.compile(r"<!doctype html|<html[\s>]|<body[\s>]", re.IGNORECASE)
_PAGE_END = re.compile(r"</html>|</body>", re.IGNORECASE)


def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate as U+FFFD (a surrogate pair becomes the character it
    encodes). JSON may carry lone surrogates (``"\\ud800"``), but UTF-8 cannot: SQLite, the
    tokenizer and the page would each fail on them, and the session with them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


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


def agent_markdown(text: str, kind: str) -> str:
    """An agent message as the chat shows it.

    Backend: an unfenced final answer gets a python fence, so code shows highlighted. Frontend: the
    page's HTML goes in an html fence, so the chat shows its source (the rendered page is shown as
    an image beside it) instead of letting the model's markup into the app's own page.
    """
    if "```" in text:
        return text
    if kind == "backend" and ANSWER_MARKER in text:
        head, answer = text.split(ANSWER_MARKER, 1)
        return f"{head}{ANSWER_MARKER}\n```python\n{answer.strip()}\n```"
    start = _PAGE_START.search(text) if kind == "frontend" else None
    if start is None:
        return text
    ends = list(_PAGE_END.finditer(text, start.start()))
    end = ends[-1].end() if ends else len(text)
    return f"{text[:start.start()]}\n```html\n{text[start.start():end]}\n```\n{text[end:]}"


def score_summary(scores: dict, kind: str) -> str:
    """A scored answer in one line: tests passed (backend), CLIP and design (frontend), or why
    it has no score."""
    error = scores.get("error")
    if error and not any(key in scores for key in ("tests_passed", "clip", "design")):
        return f"not scored: {error}"
    if kind == "backend":  # an answer without code is scored (0 tests) and says why
        return (f"{scores.get('tests_passed', 0):.0%} of tests passed · {'✓ success' if scores.get('success') else '✗'}"
                + (f" · {error}" if error else ""))
    parts = [f"CLIP {scores['clip']:.3f}"] if "clip" in scores else []
    if "design" in scores:
        parts.append(f"design {scores['design']:.3f}")
    if scores.get("render_error"):
        parts.append(f"render error: {scores['render_error']}")
    return " · ".join(parts) or "no page to score"
