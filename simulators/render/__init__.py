"""Render HTML pages to full-page screenshots in headless Chromium, offline and deterministically.

``Renderer.render(html)`` returns a :class:`RenderResult`: the PNG bytes (and a PIL image), plus
the page's text blocks, images and sections read from the DOM in the same page visit, so the
design metrics and the difference report need no second render.

What lives where
----------------
* ``browser.py``: :class:`Renderer`, the pool of Chromium contexts, the page visit and the
  screenshot; :func:`shared_renderer`, the process-wide instance.
* ``proxy.py``: :class:`~.proxy.AssetProxy`, the local HTTP proxy that is the browser's only
  network; which Tailwind files it serves from ``$COLLAB_HOME/web`` (:func:`asset_warnings`
  when they are missing); :func:`is_static_html`, which pages may skip a navigation.
* ``tailwind_subset.py``: :class:`TailwindSubset`, the stylesheet cut to one page, and the small
  CSS tokenizer it needs.
* ``placeholders.py``: :func:`placeholder_png`, stand-in photos for picsum.photos and
  via.placeholder.com.
* ``result.py``: :class:`RenderResult`, :class:`TextBlock`, :class:`PageImage`,
  :class:`PageSection`.
* ``page_scripts.py`` and ``js/``: the JavaScript run in pages, as real ``.js`` files (package
  data): ``init_page.js`` before any page script, ``extract_dom.js`` for the DOM read-out.

Who imports it: ``simulators.scoring`` (frontend scoring, design metrics), ``simulators.humans`` (the simulated
human looks at pages), ``collab_app`` (the app's shared renderer and its asset warnings), the
tests and ``bench/bench_frontend_render.py``, all through the names re-exported here. It imports
only ``simulators.paths`` of the project.

How a render works
------------------
* One Chromium (Debian's ``/usr/lib/chromium/chromium`` by default, else Playwright's bundled
  one) is kept warm behind Playwright's async API, which runs on an event loop in a dedicated
  thread. Public methods are synchronous and thread-safe: they hand coroutines to that loop, so
  Gradio handler threads and batch jobs can call them at the same time.
* A small pool of browser contexts (one page each, ``pool_size``, default 2 for 2 cores) renders
  in parallel. A page that can run code (scripts, event handlers, subframes...) gets a fresh
  top-level navigation (fresh document and JS realm). A static page, the common case, is
  written into the slot's current document instead (``document.write``, what Playwright's
  ``set_content`` does): nothing in it can leave or read state, it keeps its own quirks or
  standards mode and ``100vh`` is the window height either way, so the pixels are the same as
  after a navigation (the tests check it) at a third of the cost. A page that hangs
  (``while(true){}``), crashes or times out has its context closed and replaced in the
  background; the browser and the other slots carry on. A dead browser is relaunched.
* Every request goes to the asset proxy on 127.0.0.1, which serves the page itself, the Tailwind
  files and placeholder images, and refuses everything else (HTTPS ``CONNECT`` included) at
  once. ``--host-resolver-rules`` makes any request that escapes the proxy fail DNS. In static
  pages the Tailwind v2 link gets the page's id, so that the proxy can serve
  :class:`TailwindSubset`: the stylesheet without the rules whose classes appear nowhere in the
  page (no pixel changes; Chromium no longer parses 40,000 rules for every document).
* Fixed viewport ``1366x768`` at scale 1 (the default window of headless Firefox, which ColBench
  renders with); the screenshot is the full page at that width, capped at ``max_height`` pixels.
  Animations and transitions are switched off, ``Math.random`` is seeded, timezone/locale are
  fixed: the same HTML gives the same pixels.
* Dialogs are dismissed (``beforeunload`` accepted, so the next navigation is never blocked),
  ``window.open`` is disabled and any popup that still opens is closed.
"""

from simulators.render.browser import (
    DEFAULT_CHROMIUM,
    MAX_BLOCKS,
    MAX_SCREENSHOT_HEIGHT,
    VIEWPORT_HEIGHT,
    VIEWPORT_WIDTH,
    Renderer,
    RendererUnavailable,
    shared_renderer,
)
from simulators.render.page_scripts import EXTRACT_SCRIPT
from simulators.render.placeholders import placeholder_png
from simulators.render.proxy import TAILWIND_V2_FILE, asset_warnings, is_static_html
from simulators.render.result import PageImage, PageSection, RenderResult, TextBlock
from simulators.render.tailwind_subset import TailwindSubset

__all__ = [
    "DEFAULT_CHROMIUM",
    "EXTRACT_SCRIPT",
    "MAX_BLOCKS",
    "MAX_SCREENSHOT_HEIGHT",
    "TAILWIND_V2_FILE",
    "VIEWPORT_HEIGHT",
    "VIEWPORT_WIDTH",
    "PageImage",
    "PageSection",
    "RenderResult",
    "Renderer",
    "RendererUnavailable",
    "TailwindSubset",
    "TextBlock",
    "asset_warnings",
    "is_static_html",
    "placeholder_png",
    "shared_renderer",
]
