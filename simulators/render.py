"""Render HTML pages to full-page screenshots in headless Chromium, offline and deterministically.

``Renderer.render(html)`` returns a :class:`RenderResult`: the PNG bytes (and a PIL image), plus
the page's text blocks, images and sections read from the DOM in the same page visit, so the
design metrics and the difference report need no second render.

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
* Every request goes to :class:`_AssetProxy`, a local HTTP proxy on 127.0.0.1 that serves the
  page itself, the Tailwind files from ``$COLLAB_HOME/web`` and placeholder images for
  picsum.photos / via.placeholder.com, and refuses everything else (HTTPS ``CONNECT`` included)
  at once. ``--host-resolver-rules`` makes any request that escapes the proxy fail DNS.
  We use a proxy rather than Playwright's ``route()`` because routing disables Chromium's HTTP
  cache and pushes the 2.9 MB stylesheet through the driver pipe on every page (measured: about
  0.4 s extra per render on 2 cores). The HTML is rewritten in two ways only: ``https://`` ->
  ``http://`` for the allowlisted asset hosts (so those requests reach the proxy as plain
  requests), and in static pages the Tailwind v2 link gets the page's id, so that the proxy can
  serve :class:`TailwindSubset`: the stylesheet without the rules whose classes appear nowhere
  in the page. Those rules can never match, so no pixel changes, but Chromium no longer parses
  and indexes 40,000 rules for every document (about 90 ms of CPU per page here).
* Fixed viewport ``1366x768`` at scale 1 (the default window of headless Firefox, which ColBench
  renders with); the screenshot is the full page at that width, capped at ``max_height`` pixels.
  Animations and transitions are switched off, ``Math.random`` is seeded, timezone/locale are
  fixed: the same HTML gives the same pixels.
* Dialogs are dismissed (``beforeunload`` accepted, so the next navigation is never blocked),
  ``window.open`` is disabled and any popup that still opens is closed.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, ImageDraw

from simulators.paths import web_dir

log = logging.getLogger(__name__)

DEFAULT_CHROMIUM = "/usr/lib/chromium/chromium"
VIEWPORT_WIDTH = 1366
VIEWPORT_HEIGHT = 768
MAX_SCREENSHOT_HEIGHT = 8192  # a huge DOM must not produce a 100k-pixel image
DEFAULT_TIMEOUT_S = 10.0
MAX_BLOCKS = 1500  # text blocks read from one page; beyond this the page is marked truncated
RECYCLE_AFTER = 300  # renders per context before it is replaced (bounds memory growth)

TAILWIND_V2_FILE = "tailwind-2.2.19.min.css"
TAILWIND_V3_FILE = "tailwindcss-3.4.10.js"
FETCH_HINT = "run scripts/fetch_web_assets.sh {dest} (needs npm and the npm registry)"

PAGE_HOST = "collab.render"  # the pages' own origin, known only to the proxy
BLANK_URL = f"http://{PAGE_HOST}/blank"  # a fresh document of that origin, for static pages
BLANK_HTML = b"<!DOCTYPE html><html><head></head><body></body></html>"
# Anything that could run code or navigate: such pages get a real navigation.
_ACTIVE_HTML = re.compile(
    r"<\s*(?:script|iframe|frame|object|embed|portal)\b|\son[a-z]+\s*=|javascript:|<\s*meta[^>]*http-equiv",
    re.IGNORECASE,
)
ASSET_HOSTS = (
    "cdn.jsdelivr.net",
    "unpkg.com",
    "cdn.tailwindcss.com",
    "picsum.photos",
    "fastly.picsum.photos",
    "via.placeholder.com",
)
_HTTPS_ASSET_URL = re.compile(
    r"https://(?=(?:" + "|".join(re.escape(h) for h in ASSET_HOSTS) + r")(?:[/:?#\"'\s]|$))",
    re.IGNORECASE,
)
SUBSET_QUERY = "collab-page"
_TAILWIND_V2_LINK = re.compile(
    r"http://(?:cdn\.jsdelivr\.net|unpkg\.com)(?:/npm)?/tailwindcss@[~^]?2(?:\.[\w.-]*)?/dist/tailwind(?:\.min)?\.css(?=[\"'\s>])",
    re.IGNORECASE,
)
_TAILWIND_V2_PATH = re.compile(r"^(?:/npm)?/tailwindcss@[~^]?2(?:\.[\w.-]*)?/dist/tailwind(?:\.min)?\.css$")
_PICSUM_PATH = re.compile(
    r"^/(?:(?:id|seed)/(?P<key>[\w-]+)/)?(?P<w>\d{1,5})(?:/(?P<h>\d{1,5}))?(?:\.(?:jpg|jpeg|png|webp))?/?$"
)
_PLACEHOLDER_PATH = re.compile(r"^/(?P<w>\d{1,5})(?:x(?P<h>\d{1,5}))?(?:\.(?:png|jpg|jpeg|gif|webp))?/?$")
MAX_PLACEHOLDER_SIDE = 5000  # picsum's own limit

CHROMIUM_ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--proxy-bypass-list=<-loopback>",  # even 127.0.0.1 URLs in a page go to the proxy (and are refused)
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-color-profile=srgb",
    # Partial raster re-draws only the changed part of a tile, which leaves one-level
    # anti-aliasing differences on curved edges between renders: off, for identical pixels.
    "--disable-partial-raster",
    # No --disable-features here: Chromium keeps only the last one given, and Playwright passes
    # its own list (HTTPS upgrades, paint holding, ... already off).
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
]

# Runs before any page script: deterministic Math.random, no new windows.
_INIT_SCRIPT = """
(() => {
  let seed = 0x2f6b1c3d;
  Math.random = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  window.open = () => null;
})();
"""

# The DOM extraction: one page.evaluate reads everything the metrics need (an async function of
# the block limit). It freezes animations first, so the screenshot taken right after matches what
# was measured.
EXTRACT_SCRIPT = """
async (maxBlocks) => {
  const freeze = document.createElement('style');
  freeze.textContent = '*,*::before,*::after{animation:none!important;transition:none!important;' +
    'caret-color:transparent!important;scroll-behavior:auto!important}';
  (document.head || document.documentElement || document).appendChild(freeze);
  if (document.fonts) { await document.fonts.ready; }

  const styles = new Map();
  const style = (el) => { let s = styles.get(el); if (!s) { s = getComputedStyle(el); styles.set(el, s); } return s; };
  // CSS background images do not hold the load event: wait for them as well (they come from
  // the proxy or the cache at once), so that the screenshot never races them.
  const backgroundUrls = new Set();
  let scanned = 0;
  for (const el of document.getElementsByTagName('*')) {
    if (++scanned > 5000 || backgroundUrls.size >= 50) break;
    const image = style(el).backgroundImage;
    if (image && image !== 'none') {
      for (const m of image.matchAll(/url\\("([^"]*)"\\)/g)) backgroundUrls.add(m[1]);
    }
  }
  await Promise.all([...backgroundUrls].map((src) => {  // decoded, not just loaded: painted at once
    const img = new Image();
    img.src = src;
    return img.decode().catch(() => null);
  }));

  const canvas = document.createElement('canvas').getContext('2d', {willReadFrequently: true});
  const colours = new Map();
  const rgba = (value) => {
    if (colours.has(value)) return colours.get(value);
    let out = null;
    const m = /^rgba?\\(\\s*([\\d.]+)[\\s,]+([\\d.]+)[\\s,]+([\\d.]+)(?:\\s*[,/]\\s*([\\d.]+%?))?\\s*\\)$/.exec(value);
    if (m) {
      let a = m[4] === undefined ? 1 : m[4].endsWith('%') ? parseFloat(m[4]) / 100 : parseFloat(m[4]);
      out = [Math.round(+m[1]), Math.round(+m[2]), Math.round(+m[3]), a];
    } else {  // other colour syntaxes (oklch, color(), ...): let the canvas convert them
      canvas.clearRect(0, 0, 1, 1); canvas.fillStyle = '#000'; canvas.fillStyle = value;
      canvas.fillRect(0, 0, 1, 1);
      const d = canvas.getImageData(0, 0, 1, 1).data;
      out = [d[0], d[1], d[2], d[3] / 255];
    }
    colours.set(value, out);
    return out;
  };
  const backgrounds = new Map();
  const background = (el) => {  // the first opaque-ish background at or above el
    const chain = [];
    let found = null;
    for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
      if (backgrounds.has(e)) { found = backgrounds.get(e); break; }
      chain.push(e);
      const c = rgba(style(e).backgroundColor);
      if (c[3] > 0.5) { found = c.slice(0, 3); break; }
    }
    if (!found) found = [255, 255, 255];
    for (const e of chain) backgrounds.set(e, found);
    return found;
  };
  const sx = window.scrollX, sy = window.scrollY;
  const box = (r) => [r.left + sx, r.top + sy, r.width, r.height];
  const visible = (el) => {
    const s = style(el);
    return s.visibility !== 'hidden' && s.visibility !== 'collapse' && parseFloat(s.opacity) > 0.01;
  };
  const isBlockish = (el) => { const d = style(el).display; return d !== 'inline' && d !== 'contents'; };

  // Text blocks: text nodes grouped by their nearest non-inline ancestor.
  const groups = new Map();
  const order = [];
  const root = document.body || document.documentElement;
  let truncated = false;
  if (root) {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode: (n) => /\\S/.test(n.data) ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_REJECT,
    });
    const range = document.createRange();
    let node;
    while ((node = walker.nextNode())) {
      const parent = node.parentElement;
      if (!parent || ['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'TITLE'].includes(parent.tagName)) continue;
      if (!visible(parent)) continue;
      range.selectNodeContents(node);
      const r = range.getBoundingClientRect();
      if (r.width < 1 || r.height < 1) continue;
      let container = parent;
      while (container.parentElement && !isBlockish(container)) container = container.parentElement;
      let g = groups.get(container);
      if (!g) {
        if (order.length >= maxBlocks) { truncated = true; break; }
        g = {el: container, parts: [], rect: null, styleEl: parent, chars: 0};
        groups.set(container, g);
        order.push(g);
      }
      const text = node.data.replace(/\\s+/g, ' ');
      g.parts.push(text);
      const b = box(r);
      if (!g.rect) g.rect = b;
      else {
        const x1 = Math.min(g.rect[0], b[0]), y1 = Math.min(g.rect[1], b[1]);
        const x2 = Math.max(g.rect[0] + g.rect[2], b[0] + b[2]), y2 = Math.max(g.rect[1] + g.rect[3], b[1] + b[3]);
        g.rect = [x1, y1, x2 - x1, y2 - y1];
      }
      if (text.trim().length > g.chars) { g.chars = text.trim().length; g.styleEl = parent; }
    }
    // Form fields show text that is not in a text node.
    for (const el of root.querySelectorAll('input, textarea')) {
      if (order.length >= maxBlocks) { truncated = true; break; }
      const type = (el.getAttribute('type') || 'text').toLowerCase();
      if (['hidden', 'checkbox', 'radio', 'range', 'color', 'file', 'image'].includes(type)) continue;
      const text = (el.value || el.getAttribute('placeholder') || '').replace(/\\s+/g, ' ').trim();
      const r = el.getBoundingClientRect();
      if (!text || r.width < 1 || r.height < 1 || !visible(el)) continue;
      order.push({el, parts: [text], rect: box(r), styleEl: el, chars: text.length});
    }
  }
  const blocks = [];
  for (const g of order) {
    const text = g.parts.join('').replace(/\\s+/g, ' ').trim();
    if (!text) continue;
    const s = style(g.styleEl);
    blocks.push({
      text, x: g.rect[0], y: g.rect[1], width: g.rect[2], height: g.rect[3],
      color: rgba(s.color).slice(0, 3), background: background(g.styleEl),
      font_size: parseFloat(s.fontSize) || 16, font_weight: parseInt(s.fontWeight, 10) || 400,
      tag: g.el.tagName.toLowerCase(),
    });
  }

  const images = [];
  if (root) {
    for (const el of root.querySelectorAll('img, svg, video, iframe, canvas, picture')) {
      if (images.length >= 300) break;
      if (el.closest('svg') && el.tagName.toLowerCase() !== 'svg') continue;
      const r = el.getBoundingClientRect();
      if (r.width < 2 || r.height < 2 || !visible(el)) continue;
      const tag = el.tagName.toLowerCase();
      images.push({
        tag, x: r.left + sx, y: r.top + sy, width: r.width, height: r.height,
        src: (el.currentSrc || el.getAttribute('src') || '').slice(0, 300),
        alt: (el.getAttribute('alt') || el.getAttribute('aria-label') || '').slice(0, 200),
        loaded: tag !== 'img' || (el.complete && el.naturalWidth > 0),
      });
    }
  }

  const sections = [];
  if (document.body) {
    const seen = new Set();
    const landmarks = [...document.body.querySelectorAll('header, nav, main, section, footer, aside, form, article')];
    for (const el of [...document.body.children, ...landmarks]) {
      if (seen.has(el) || sections.length >= 150) continue;
      seen.add(el);
      if (['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'LINK', 'META'].includes(el.tagName)) continue;
      const r = el.getBoundingClientRect();
      if (r.width < 2 || r.height < 2 || !visible(el)) continue;
      let depth = 0;
      for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) depth++;
      sections.push({
        tag: el.tagName.toLowerCase(), x: r.left + sx, y: r.top + sy, width: r.width, height: r.height,
        background: background(el), depth,
        text: (el.innerText || '').replace(/\\s+/g, ' ').trim().slice(0, 120),
      });
    }
  }

  const de = document.documentElement;
  const height = Math.max(de ? de.scrollHeight : 0, document.body ? document.body.scrollHeight : 0, window.innerHeight);
  return {
    blocks, images, sections, truncated,
    title: document.title || '',
    page_height: Math.ceil(height),
    background: document.body ? background(document.body) : [255, 255, 255],
  };
}
"""


class RendererUnavailable(RuntimeError):
    """No usable Chromium could be started; the message says how to get one."""


@dataclass
class TextBlock:
    """A run of visible text sharing one block-level container, in CSS pixels of the page."""

    text: str
    x: float
    y: float
    width: float
    height: float
    color: tuple[int, int, int]
    background: tuple[int, int, int]
    font_size: float
    font_weight: int
    tag: str

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.width / 2, self.y + self.height / 2


@dataclass
class PageImage:
    """An image-like element (img, svg, video, iframe, canvas)."""

    tag: str
    x: float
    y: float
    width: float
    height: float
    src: str
    alt: str
    loaded: bool


@dataclass
class PageSection:
    """A top-level child of <body> or a landmark element (header, nav, section, footer...)."""

    tag: str
    x: float
    y: float
    width: float
    height: float
    background: tuple[int, int, int]
    depth: int
    text: str


@dataclass
class RenderResult:
    """What one render produced. ``ok=False`` comes with ``error`` and no screenshot."""

    ok: bool
    error: str | None = None
    png: bytes | None = None
    width: int = 0  # screenshot size in pixels (CSS px, scale 1)
    height: int = 0
    page_height: int = 0  # the document's full height, before the screenshot cap
    truncated: bool = False  # screenshot capped at max_height, or more than MAX_BLOCKS text blocks
    title: str = ""
    background: tuple[int, int, int] = (255, 255, 255)
    blocks: list[TextBlock] = field(default_factory=list)
    images: list[PageImage] = field(default_factory=list)
    sections: list[PageSection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    _image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def image(self) -> Image.Image | None:
        """The screenshot as an RGB PIL image (decoded on first use)."""
        if self._image is None and self.png is not None:
            self._image = Image.open(io.BytesIO(self.png)).convert("RGB")
        return self._image

    @classmethod
    def from_extraction(cls, dom: dict[str, Any], png: bytes, width: int, height: int) -> RenderResult:
        """A successful result from EXTRACT_SCRIPT's output and a screenshot of width x height."""
        page_height = max(int(dom["page_height"]), 1)
        return cls(
            ok=True,
            png=png,
            width=width,
            height=height,
            page_height=page_height,
            truncated=bool(dom["truncated"]) or page_height > height,
            title=dom["title"],
            background=tuple(dom["background"]),
            blocks=[TextBlock(**{**b, "color": tuple(b["color"]), "background": tuple(b["background"])}) for b in dom["blocks"]],
            images=[PageImage(**image) for image in dom["images"]],
            sections=[PageSection(**{**s, "background": tuple(s["background"])}) for s in dom["sections"]],
        )


# ---------------------------------------------------------------------------------------------
# Offline assets


@lru_cache(maxsize=64)
def placeholder_png(key: str, width: int, height: int) -> bytes:
    """A deterministic stand-in photo for picsum.photos: a diagonal two-colour gradient with a
    pale disc, colours derived from the image key, so the same URL always gives the same pixels."""
    digest = hashlib.sha256(key.encode()).digest()
    top = np.array([60 + digest[0] % 140, 60 + digest[1] % 140, 60 + digest[2] % 140], dtype=np.float32)
    bottom = np.array([20 + digest[3] % 80, 20 + digest[4] % 80, 20 + digest[5] % 80], dtype=np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = ((xs / max(width - 1, 1) + ys / max(height - 1, 1)) / 2)[..., None]
    image = Image.fromarray((top * (1 - t) + bottom * t).astype(np.uint8), "RGB")
    radius = max(2, min(width, height) // 6)
    cx, cy = width * (0.25 + (digest[6] % 50) / 100), height * 0.35
    ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(245, 235, 200))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _placeholder_size(host: str, path: str) -> tuple[str, int, int] | None:
    """(key, width, height) for a placeholder-image URL we serve, else None."""
    if host in ("picsum.photos", "fastly.picsum.photos"):
        match = _PICSUM_PATH.match(path)
        key = match and (match["key"] or "default")
    elif host == "via.placeholder.com":
        match = _PLACEHOLDER_PATH.match(path)
        key = "via-placeholder"
    else:
        return None
    if not match:
        return None
    width = int(match["w"])
    height = int(match["h"] or width)
    if not (1 <= width <= MAX_PLACEHOLDER_SIDE and 1 <= height <= MAX_PLACEHOLDER_SIDE):
        return None
    return key, width, height


_CSS_CLASS = re.compile(r"\.((?:[\w-]|\\[0-9a-fA-F]{1,6}[ \t]?|\\[^0-9a-fA-F\n])+)")
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})[ \t]?|\\(.)")
_CSS_NOT = re.compile(r":not\([^()]*\)")
_CSS_ATTRIBUTE = re.compile(r"\[[^\]]*\]")
_CSS_ALTERNATIVES = (":is(", ":where(", ":has(", ":matches(", ":-webkit-any(")
_HTML_TOKEN_SEPARATORS = re.compile(r"[\s\"'<>=`(),;{}]+")


_CSS_SPECIAL = re.compile(r"[{}\"']|/\*")


def _css_blocks(css: str) -> list[tuple[str, str]]:
    """``(prelude, body)`` for each ``prelude{body}`` at the top level of ``css`` (comments
    dropped, strings and nested braces respected)."""
    blocks: list[tuple[str, str]] = []
    depth, prelude_start, body_start, pos = 0, 0, 0, 0
    comments: list[tuple[int, int]] = []  # spans to cut out of the current prelude
    while (match := _CSS_SPECIAL.search(css, pos)) is not None:
        token, at = match.group(), match.start()
        if token == "/*":
            close = css.find("*/", at + 2)
            pos = len(css) if close < 0 else close + 2
            if depth == 0:
                comments.append((at, pos))
        elif token in "\"'":
            close = at + 1
            while close < len(css) and css[close] != token:
                close += 2 if css[close] == "\\" else 1
            pos = close + 1
        elif token == "{":
            if depth == 0:
                body_start = at + 1
                prelude = css[prelude_start:at]
                for cut_start, cut_end in reversed(comments):
                    prelude = prelude[: cut_start - prelude_start] + prelude[cut_end - prelude_start :]
                comments = []
            depth += 1
            pos = at + 1
        else:  # "}"
            depth -= 1
            if depth == 0:
                blocks.append((prelude.strip(), css[body_start:at]))
                prelude_start = at + 1
            pos = at + 1
    return blocks


def _selector_classes(selector: str) -> frozenset[str] | None:
    """Classes an element tree needs for ``selector`` to match anything (lower-cased, since
    quirks-mode pages match classes case-insensitively); None when that cannot be told."""
    if any(alternative in selector for alternative in _CSS_ALTERNATIVES):
        return None
    selector = _CSS_ATTRIBUTE.sub("[]", _CSS_NOT.sub("", selector))
    return frozenset(
        _CSS_ESCAPE.sub(lambda m: chr(int(m[1], 16)) if m[1] else m[2], name).lower()
        for name in _CSS_CLASS.findall(selector)
    )


class TailwindSubset:
    """The Tailwind stylesheet cut down to the rules one page can use.

    A rule all of whose selectors need a class that appears nowhere in the page's HTML can never
    match, so leaving it out changes no pixel. Classes are looked for among every token of the
    HTML, scripts included (a superset of what ends up in the DOM). Rule order, ``@media``
    blocks and ``@keyframes`` are kept as they were.
    """

    def __init__(self, css: str) -> None:
        self._rules: list[tuple[int, str]] = []  # (media block number or -1, "selector{body}")
        self._media: list[str] = []  # media block number -> its prelude
        self._always: set[int] = set()  # rules kept for every page
        self._by_class: dict[str, list[tuple[int, frozenset[str]]]] = {}
        for prelude, body in _css_blocks(css):
            if prelude.startswith("@media"):
                self._media.append(prelude)
                for selector, rule_body in _css_blocks(body):
                    self._add(len(self._media) - 1, selector, rule_body)
            elif prelude.startswith("@"):  # @keyframes and other at-rules: always kept
                self._always.add(len(self._rules))
                self._rules.append((-1, f"{prelude}{{{body}}}"))
            else:
                self._add(-1, prelude, body)

    def _add(self, media: int, selector_list: str, body: str) -> None:
        index = len(self._rules)
        self._rules.append((media, f"{selector_list}{{{body}}}"))
        needs = [_selector_classes(selector) for selector in _split_selectors(selector_list)]
        if any(classes is None or not classes for classes in needs):
            self._always.add(index)
            return
        for classes in needs:
            self._by_class.setdefault(min(classes), []).append((index, classes))

    def __len__(self) -> int:
        return len(self._rules)

    def for_html(self, html: str) -> str:
        tokens = {token.lower() for token in _HTML_TOKEN_SEPARATORS.split(html) if token}
        keep = set(self._always)
        for token in tokens:
            for index, classes in self._by_class.get(token, ()):
                if classes <= tokens:
                    keep.add(index)
        out, open_media = [], -1
        for index in sorted(keep):
            media, rule = self._rules[index]
            if media != open_media:
                if open_media >= 0:
                    out.append("}")
                if media >= 0:
                    out.append(self._media[media] + "{")
                open_media = media
            out.append(rule)
        if open_media >= 0:
            out.append("}")
        return "".join(out)


def _split_selectors(selector_list: str) -> list[str]:
    """Split a selector list at its top-level commas."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(selector_list):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(selector_list[start:i])
            start = i + 1
    parts.append(selector_list[start:])
    return [part.strip() for part in parts if part.strip()]


def is_static_html(html: str) -> bool:
    """True when nothing in the page can run code or navigate (no scripts, event handlers,
    javascript: URLs, subframes or meta refresh): a conservative test, false positives only."""
    return _ACTIVE_HTML.search(html) is None


_subset_lock = threading.Lock()


@lru_cache(maxsize=2)
def _tailwind_subset_cached(path: Path, mtime_ns: int) -> TailwindSubset:
    return TailwindSubset(path.read_text(encoding="utf-8"))


def _tailwind_subset(path: Path) -> TailwindSubset:
    """The parsed stylesheet, built once per file version and shared by every renderer."""
    with _subset_lock:
        return _tailwind_subset_cached(path, path.stat().st_mtime_ns)


class _AssetProxy:
    """The only network the browser sees: serves pages and allowlisted assets, refuses the rest."""

    def __init__(self, assets_dir: Path, *, tailwind_subset: bool = True) -> None:
        self.assets_dir = assets_dir
        self.tailwind_subset = tailwind_subset and (assets_dir / TAILWIND_V2_FILE).is_file()
        if self.tailwind_subset:  # index the stylesheet while the browser starts
            threading.Thread(target=_tailwind_subset, args=(assets_dir / TAILWIND_V2_FILE,), daemon=True).start()
        self._pages: dict[str, str] = {}
        self._lock = threading.Lock()
        self._files: dict[str, bytes | None] = {}
        self.requests_served: dict[str, int] = {"page": 0, "tailwind_v2": 0, "tailwind_v3": 0, "image": 0}
        self.requests_refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                proxy._answer(self)

            def do_CONNECT(self) -> None:  # noqa: N802 - HTTPS tunnels: nothing outside is reachable
                proxy._refuse(self, 403)

            def _refuse_method(self) -> None:
                proxy._refuse(self, 405)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _refuse_method

            def log_message(self, *args: Any) -> None:  # keep request logs out of stderr
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="render-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_page(self, html: str) -> tuple[str, str, str]:
        """Register a page; returns (path, url, HTML as served). Asset URLs are pointed at the
        proxy, and the Tailwind v2 link names the page so that the proxy can serve its subset."""
        # Unguessable: a page may fetch from its own origin, and must not reach the others
        # (an answer rendered beside the reference could copy the reference into its screenshot).
        path = f"/page/{secrets.token_urlsafe(18)}"
        html = _HTTPS_ASSET_URL.sub("http://", html)
        # Only static pages: a script could put together class names that its text never spells.
        if self.tailwind_subset and is_static_html(html):
            html = _TAILWIND_V2_LINK.sub(lambda m: f"{m[0]}?{SUBSET_QUERY}={path}", html)
        with self._lock:
            self._pages[path] = html
        return path, f"http://{PAGE_HOST}{path}", html

    def drop_page(self, path: str) -> None:
        with self._lock:
            self._pages.pop(path, None)

    def asset(self, name: str) -> bytes | None:
        """A file from the assets folder, read once (None when missing)."""
        with self._lock:
            if name not in self._files:
                path = self.assets_dir / name
                self._files[name] = path.read_bytes() if path.is_file() and path.stat().st_size > 0 else None
            return self._files[name]

    def _tailwind_v2(self, query: str) -> bytes | None:
        """The page's subset when the link names a page we hold, else the whole stylesheet."""
        page_path = parse_qs(query).get(SUBSET_QUERY, [""])[0]
        with self._lock:
            page = self._pages.get(page_path)
        if page is None or not self.tailwind_subset:
            return self.asset(TAILWIND_V2_FILE)
        return _tailwind_subset(self.assets_dir / TAILWIND_V2_FILE).for_html(page).encode()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        host = (url.hostname or "").lower()
        body: bytes | None = None
        content_type = "application/octet-stream"
        cache = "public, max-age=31536000, immutable"
        kind = ""
        if handler.path == BLANK_URL:
            body, content_type, cache, kind = BLANK_HTML, "text/html; charset=utf-8", "no-store", "page"
        elif host == PAGE_HOST and url.path.startswith("/page/"):
            with self._lock:
                page = self._pages.get(url.path)
            body = page.encode("utf-8", errors="replace") if page is not None else None
            content_type, cache, kind = "text/html; charset=utf-8", "no-store", "page"
        elif host in ("cdn.jsdelivr.net", "unpkg.com") and _TAILWIND_V2_PATH.match(url.path):
            body, content_type, kind = self._tailwind_v2(url.query), "text/css; charset=utf-8", "tailwind_v2"
            if SUBSET_QUERY in url.query:  # made for one page: nothing to reuse
                cache = "no-store"
        elif host == "cdn.tailwindcss.com":
            body, content_type, kind = self.asset(TAILWIND_V3_FILE), "text/javascript; charset=utf-8", "tailwind_v3"
        elif (size := _placeholder_size(host, url.path)) is not None:
            body, content_type, kind = placeholder_png(*size), "image/png", "image"
        if body is None:
            self._refuse(handler, 404)
            return
        with self._lock:
            self.requests_served[kind] += 1
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.send_header("Cache-Control", cache)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the page was closed mid-transfer
            handler.close_connection = True

    def _refuse(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.requests_refused += 1
        try:
            handler.send_response(status)
            handler.send_header("Content-Length", "0")
            # Cached refusals spare repeat trips (favicon.ico on every navigation).
            handler.send_header("Cache-Control", "public, max-age=86400")
            if status == 403:
                handler.send_header("Connection", "close")
                handler.close_connection = True
            handler.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()



def asset_warnings(assets_dir: Path) -> list[str]:
    """Plain-English warnings about missing Tailwind files (rendering goes on without them)."""
    missing = [name for name in (TAILWIND_V2_FILE, TAILWIND_V3_FILE) if not (assets_dir / name).is_file()]
    if not missing:
        return []
    return [
        f"Tailwind file(s) {', '.join(missing)} missing from {assets_dir}: pages that link Tailwind "
        f"render unstyled; {FETCH_HINT.format(dest=assets_dir)}"
    ]


# ---------------------------------------------------------------------------------------------
# The renderer


@dataclass
class _Slot:
    """One browser context with its page, reused for many renders."""

    context: Any
    page: Any
    cdp: Any
    renders: int = 0
    broken: bool = False
    # The page's JS realm may hold state (a script ran, or nothing was loaded yet): the next
    # static page must start from a fresh document.
    needs_fresh_document: bool = True


class Renderer:
    """HTML -> full-page screenshot + DOM text blocks, in a warm headless Chromium.

    ``tailwind_subset=False`` serves the whole Tailwind stylesheet to every page (slower, same
    pixels; the tests compare the two).

    Thread-safe; start-up is lazy (first render) and takes about a second. Call :meth:`close`
    (or use it as a context manager) to end the browser; :func:`shared_renderer` gives one
    process-wide instance that is closed at exit.
    """

    def __init__(
        self,
        *,
        executable_path: str | None = None,
        assets_dir: str | os.PathLike | None = None,
        pool_size: int = 2,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        viewport: tuple[int, int] = (VIEWPORT_WIDTH, VIEWPORT_HEIGHT),
        max_height: int = MAX_SCREENSHOT_HEIGHT,
        tailwind_subset: bool = True,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.executable_path = executable_path
        self.assets_dir = Path(assets_dir) if assets_dir is not None else web_dir()
        self.pool_size = pool_size
        self.timeout_s = timeout_s
        self.viewport = viewport
        self.max_height = max_height
        self.tailwind_subset = tailwind_subset
        self.warnings = asset_warnings(self.assets_dir)
        self.slots_recycled = 0
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._proxy: _AssetProxy | None = None
        self._playwright: Any = None
        self._browser: Any = None
        self._browser_lock: asyncio.Lock | None = None
        self._free_slots: asyncio.Queue | None = None
        self._background: set[asyncio.Task] = set()  # slot replacements in progress
        self._closed = False

    # -- public API --------------------------------------------------------------------------

    def render(self, html: str, *, timeout_s: float | None = None) -> RenderResult:
        """Render one page. Never raises for a bad page: failures come back as ``ok=False``."""
        return self.render_many([html], timeout_s=timeout_s)[0]

    def render_many(self, htmls: Sequence[str], *, timeout_s: float | None = None) -> list[RenderResult]:
        """Render pages ``pool_size`` at a time; results come back in input order."""
        if not htmls:
            return []
        loop = self._ensure_started()
        timeout = timeout_s or self.timeout_s
        future = asyncio.run_coroutine_threadsafe(self._render_all(list(htmls), timeout), loop)
        # Each page has its own deadline inside the loop; this outer bound only guards against
        # the loop itself being wedged.
        rounds = -(-len(htmls) // self.pool_size)
        return future.result(timeout=rounds * (timeout + 15) + 60)

    @property
    def proxy_stats(self) -> dict[str, Any]:
        """Requests the asset proxy served and refused (for tests and diagnostics)."""
        if self._proxy is None:
            return {"served": {}, "refused": 0}
        return {"served": dict(self._proxy.requests_served), "refused": self._proxy.requests_refused}

    def close(self) -> None:
        """Close the browser, the proxy and the loop thread. Safe to call twice."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
            except Exception as exc:  # a wedged browser must not stop interpreter exit
                log.warning("renderer shutdown was not clean: %s", exc)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        if self._proxy is not None:
            self._proxy.close()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- start-up ----------------------------------------------------------------------------

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._closed:
                raise RuntimeError("this Renderer has been closed")
            if self._loop is None:
                for warning in self.warnings:
                    log.warning(warning)
                self._proxy = _AssetProxy(self.assets_dir, tailwind_subset=self.tailwind_subset)
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name="renderer-loop", daemon=True)
                self._thread.start()
                self._loop = loop
                try:
                    asyncio.run_coroutine_threadsafe(self._start_browser(), loop).result(timeout=120)
                except BaseException:
                    self._loop = None
                    loop.call_soon_threadsafe(loop.stop)
                    self._proxy.close()
                    self._proxy = None
                    raise
            return self._loop

    def _executable(self) -> str | None:
        """The Chromium to launch: the configured path, else ``$COLLAB_CHROMIUM``, else Debian's
        chromium, else None (Playwright's bundled browser, for `playwright install chromium`)."""
        configured = self.executable_path or os.environ.get("COLLAB_CHROMIUM")
        if configured:
            if Path(configured).is_file() or shutil.which(configured):
                return configured
            raise RendererUnavailable(f"Chromium not found at {configured!r}")
        return DEFAULT_CHROMIUM if Path(DEFAULT_CHROMIUM).is_file() else None

    async def _start_browser(self) -> None:
        from playwright.async_api import async_playwright

        self._browser_lock = asyncio.Lock()
        self._free_slots = asyncio.Queue()
        self._playwright = await async_playwright().start()
        try:
            await self._launch()
            for _ in range(self.pool_size):
                self._free_slots.put_nowait(await self._new_slot())
        except BaseException:
            await self._shutdown()  # no driver process left behind
            raise

    async def _launch(self) -> None:
        executable = self._executable()
        args = [*CHROMIUM_ARGS, f"--proxy-server={self._proxy.address}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
        try:
            self._browser = await self._playwright.chromium.launch(
                executable_path=executable, args=args, headless=True, timeout=60_000
            )
        except Exception as exc:
            where = executable or "Playwright's bundled Chromium"
            raise RendererUnavailable(
                f"could not start Chromium ({where}): {str(exc).splitlines()[0]}. Install Debian's "
                f"chromium (apt-get install chromium) or run `playwright install chromium`."
            ) from exc

    async def _new_slot(self) -> _Slot:
        width, height = self.viewport
        context = await self._browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=1,
            locale="en-US",
            timezone_id="UTC",
            color_scheme="light",
            service_workers="block",
            accept_downloads=False,
        )
        context.set_default_timeout(self.timeout_s * 1000)
        await context.add_init_script(_INIT_SCRIPT)
        page = await context.new_page()
        # The init script disables window.open; popups opened anyway (e.g. through an iframe's
        # window) are closed on sight. Registered after new_page, so it never sees our own page.
        context.on("page", _close_quietly)
        page.on("dialog", _answer_dialog)
        cdp = await context.new_cdp_session(page)
        return _Slot(context=context, page=page, cdp=cdp)

    # -- rendering ---------------------------------------------------------------------------

    async def _render_all(self, htmls: list[str], timeout: float) -> list[RenderResult]:
        return await asyncio.gather(*(self._render_one(html, timeout) for html in htmls))

    async def _render_one(self, html: str, timeout: float) -> RenderResult:
        if not isinstance(html, str):
            return RenderResult(ok=False, error=f"expected an HTML string, got {type(html).__name__}")
        slot = await self._free_slots.get()
        started = time.monotonic()
        path = None
        try:
            slot = await self._healthy(slot)
            path, url, served_html = self._proxy.add_page(html)
            result = await asyncio.wait_for(self._visit(slot, url, served_html), timeout)
        except asyncio.TimeoutError:
            slot.broken = True
            result = RenderResult(
                ok=False,
                error=f"page did not finish rendering within {timeout:g} s (a script that never ends?)",
            )
        except RendererUnavailable as exc:
            slot.broken = True
            result = RenderResult(ok=False, error=str(exc))
        except Exception as exc:
            slot.broken = True
            result = RenderResult(ok=False, error=f"render failed: {_first_line(exc)}")
        finally:
            if path is not None:
                self._proxy.drop_page(path)
        slot.renders += 1
        if slot.broken:
            # Replace it in the background: the failure is reported now, and a page stuck in a
            # script loop stops burning a core as soon as its context is closed.
            task = asyncio.ensure_future(self._replace(slot))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            self._free_slots.put_nowait(slot)
        result.elapsed_s = time.monotonic() - started
        result.warnings.extend(self._warnings_for(html))
        return result

    async def _visit(self, slot: _Slot, url: str, served_html: str) -> RenderResult:
        # No Playwright timeouts (0): the caller's asyncio deadline covers the whole visit and
        # says what happened. "load" comes quickly since every request is answered locally at
        # once, unless the page's own script keeps the main thread busy.
        if is_static_html(served_html):
            # Nothing in the page can run code, so writing it into the current document gives the
            # same pixels as navigating to it (the tests compare the two), at a third of the cost.
            if slot.needs_fresh_document:
                await slot.page.goto(BLANK_URL, wait_until="load", timeout=0)
                slot.needs_fresh_document = False
            await slot.page.set_content(served_html, wait_until="load", timeout=0)
        else:
            slot.needs_fresh_document = True
            await slot.page.goto(url, wait_until="load", timeout=0)
        dom = await slot.page.evaluate(EXTRACT_SCRIPT, MAX_BLOCKS)
        width, viewport_height = self.viewport
        height = min(max(int(dom["page_height"]), 1), self.max_height)
        shot = await slot.cdp.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                # Capturing beyond the viewport is slower; only tall pages need it.
                "captureBeyondViewport": height > viewport_height,
                "optimizeForSpeed": True,  # faster PNG encoding; pixels are the same
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
        )
        return RenderResult.from_extraction(dom, base64.b64decode(shot["data"]), width, height)

    async def _healthy(self, slot: _Slot) -> _Slot:
        """The slot itself if usable, else a fresh one (relaunching the browser if it died)."""
        if slot.context is not None and slot.renders >= RECYCLE_AFTER:
            await self._discard(slot)
        if slot.context is not None and self._browser.is_connected():
            return slot
        async with self._browser_lock:
            if not self._browser.is_connected():
                log.warning("Chromium disconnected; relaunching it")
                await self._launch()
        return await self._new_slot()

    async def _replace(self, slot: _Slot) -> None:
        """Close a broken slot's context and put a fresh slot back in the pool."""
        await self._discard(slot)
        try:
            slot = await self._healthy(slot)
        except Exception as exc:  # retried when the slot is next used
            log.warning("could not open a new render context: %s", _first_line(exc))
        self._free_slots.put_nowait(slot)

    async def _discard(self, slot: _Slot) -> None:
        """Close a slot's context; the next render through this slot opens a new one."""
        self.slots_recycled += 1
        context, slot.context = slot.context, None
        if context is None:
            return
        try:
            await asyncio.wait_for(context.close(), 5)
        except Exception as exc:  # a hung renderer may not close cleanly; the browser may be gone
            log.info("closing a render context failed: %s", _first_line(exc))

    def _warnings_for(self, html: str) -> list[str]:
        if not self.warnings or "tailwind" not in html.lower():
            return []
        return list(self.warnings)

    async def _shutdown(self) -> None:
        if self._browser is not None:
            try:
                await asyncio.wait_for(self._browser.close(), 15)
            except Exception as exc:
                log.warning("closing Chromium failed: %s", _first_line(exc))
        if self._playwright is not None:
            await self._playwright.stop()


async def _close_quietly(page: Any) -> None:
    try:
        await page.close()
    except Exception as exc:  # already gone
        log.debug("popup close: %s", _first_line(exc))


async def _answer_dialog(dialog: Any) -> None:
    # Accepting beforeunload lets the next navigation leave the page; everything else is dismissed.
    try:
        if dialog.type == "beforeunload":
            await dialog.accept()
        else:
            await dialog.dismiss()
    except Exception as exc:  # the page may be closing
        log.debug("dialog: %s", _first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


_shared: Renderer | None = None
_shared_lock = threading.Lock()


def shared_renderer() -> Renderer:
    """The process-wide renderer used by scoring and the app (closed at interpreter exit)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed:
            _shared = Renderer()
            atexit.register(_shared.close)
        return _shared
