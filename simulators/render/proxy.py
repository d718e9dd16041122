"""The only network the browser sees: :class:`AssetProxy`, a local HTTP proxy on 127.0.0.1.

It serves the page being rendered, the Tailwind files from ``$COLLAB_HOME/web`` (the v2
stylesheet cut to the page by :mod:`.tailwind_subset`, the v3 CDN script as it is) and placeholder
images for picsum.photos / via.placeholder.com, and refuses everything else (HTTPS ``CONNECT``
included) at once. A proxy rather than Playwright's ``route()``: routing disables Chromium's HTTP
cache and pushes the 2.9 MB stylesheet through the driver pipe on every page (measured: about
0.4 s extra per render on 2 cores). Pages are rewritten in two ways only: ``https://`` ->
``http://`` for the allowlisted asset hosts (so those requests reach the proxy as plain requests),
and in static pages the Tailwind v2 link gets the page's id, so the proxy knows whose subset to serve.
"""

from __future__ import annotations

import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from simulators.render.placeholders import placeholder_png, placeholder_size
from simulators.render.tailwind_subset import load_subset

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


def is_static_html(html: str) -> bool:
    """True when nothing in the page can run code or navigate (no scripts, event handlers,
    javascript: URLs, subframes or meta refresh): a conservative test, false positives only."""
    return _ACTIVE_HTML.search(html) is None


class AssetProxy:
    """The only network the browser sees: serves pages and allowlisted assets, refuses the rest."""

    def __init__(self, assets_dir: Path, *, tailwind_subset: bool = True) -> None:
        self.assets_dir = assets_dir
        self.tailwind_subset = tailwind_subset and (assets_dir / TAILWIND_V2_FILE).is_file()
        if self.tailwind_subset:  # index the stylesheet while the browser starts
            threading.Thread(target=load_subset, args=(assets_dir / TAILWIND_V2_FILE,), daemon=True).start()
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
        return load_subset(self.assets_dir / TAILWIND_V2_FILE).for_html(page).encode()

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
        elif (size := placeholder_size(host, url.path)) is not None:
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
