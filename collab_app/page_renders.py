"""The one render-then-store step of the app: the page in each agent message, rendered and its
screenshot kept in the session store, for a Collaborate turn (one message) and a Compare round
(both sides' replies, in one batch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simulators.scoring.answers import extract_html
from simulators.store import SessionStore


@dataclass(frozen=True)
class PageRender:
    """What became of one message's page: the stored screenshot's hash, or why it did not render.
    Both None: the message holds no page (no ``<html>`` or ``<body>`` block)."""

    render_hash: str | None = None
    render_error: str | None = None


def render_and_store(messages: Sequence[str], renderer, store: SessionStore) -> list[PageRender]:
    """One ``PageRender`` per message, in order; the pages render together (``render_many``), so a
    round of two replies costs one batch. ``renderer`` is a ``simulators.render.Renderer``."""
    pages = {i: html for i, html in enumerate(map(extract_html, messages)) if html}
    results = renderer.render_many(list(pages.values())) if pages else []
    renders = [PageRender()] * len(messages)
    for i, result in zip(pages, results):
        renders[i] = PageRender(render_hash=store.save_render(result.png)) if result.ok else PageRender(
            render_error=result.error)
    return renders
