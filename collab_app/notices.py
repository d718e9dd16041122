"""Refusals and failures as a line of text beside the view they concern.

A handler that raises ``gr.Error`` makes Gradio cover every output of its event with a red
"Error" badge that stays until dismissed: the chat, the input and the status line could not be
read. The tabs' handlers still refuse by raising ``gr.Error`` or the rules' ``SessionError`` (the
message says why), but ``reports_to(notice)`` turns it into the text of a ``notice`` Markdown next
to the chat and leaves every other output as it was. The notice must be one of the event's outputs; a handler's own
results set it (usually to "", which clears an earlier notice).
"""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from collab_app.session import SessionError

REFUSALS = (gr.Error, SessionError)


def refusal_text(refusal: Exception) -> str:
    return warning(str(refusal.message) if isinstance(refusal, gr.Error) else str(refusal))


def notice_box(elem_id: str) -> gr.Markdown:
    return gr.Markdown(elem_id=elem_id, elem_classes=["notice"])


def warning(text: str) -> str:
    # U+26A0 as text (no emoji selector): Debian's Chromium has no emoji font, only DejaVu's glyph.
    return f"⚠ {text}" if text else ""


def reports_to(notice: gr.Markdown):
    """Decorator: the handler's refusal becomes ``notice``'s text instead of Gradio's error badge.

    Works for plain and generator handlers; a generator that fails mid-stream keeps what it
    last showed. The wrapper keeps the handler's signature (Gradio reads ``gr.LikeData`` and
    friends from its annotations).
    """
    def decorate(fn):
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except REFUSALS as refusal:
                    yield {notice: refusal_text(refusal)}
            return stream

        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except REFUSALS as refusal:
                return {notice: refusal_text(refusal)}
        return call
    return decorate
