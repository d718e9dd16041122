"""The Chromium pool: :class:`Renderer` turns HTML into a full-page screenshot and the page's text
blocks, images and sections, in a warm headless Chromium driven by Playwright's async API.

The API is synchronous and thread-safe: coroutines run on an event loop in a dedicated thread.
Each pool slot is one browser context with one page; a static page is written into the slot's
current document, any other page gets a fresh navigation; a page that hangs or crashes has its
context replaced in the background. Every request goes to :class:`~.proxy.AssetProxy`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulators.paths import web_dir
from simulators.render.page_scripts import EXTRACT_SCRIPT, INIT_SCRIPT
from simulators.render.proxy import BLANK_URL, AssetProxy, asset_warnings, is_static_html
from simulators.render.result import RenderResult

log = logging.getLogger(__name__)

DEFAULT_CHROMIUM = "/usr/lib/chromium/chromium"
VIEWPORT_WIDTH = 1366
VIEWPORT_HEIGHT = 768
MAX_SCREENSHOT_HEIGHT = 8192  # a huge DOM must not produce a 100k-pixel image
DEFAULT_TIMEOUT_S = 10.0
MAX_BLOCKS = 1500  # text blocks read from one page; beyond this the page is marked truncated
RECYCLE_AFTER = 300  # renders per context before it is replaced (bounds memory growth)
RESPONSIVE_S = 0.5  # a page that ran scripts must answer this fast before its slot is reused

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


class RendererUnavailable(RuntimeError):
    """No usable Chromium could be started; the message says how to get one."""


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
        self._proxy: AssetProxy | None = None
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
                self._proxy = AssetProxy(self.assets_dir, tailwind_subset=self.tailwind_subset)
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
        await context.add_init_script(INIT_SCRIPT)
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
        if slot.context is not None and slot.needs_fresh_document and not await _responsive(slot.page):
            # The last page's script keeps its main thread busy (a loop a timer started after the
            # render returned): leaving it would hold the next navigation past its deadline.
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


async def _responsive(page: Any) -> bool:
    """Whether the page's main thread answers within ``RESPONSIVE_S`` (a ~1 ms round trip when idle)."""
    try:
        await asyncio.wait_for(page.evaluate("0"), RESPONSIVE_S)
        return True
    except Exception:  # timed out, or the page is gone: either way not a page to reuse
        return False


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
