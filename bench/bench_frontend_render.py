"""Render + score throughput: collab-rl's renderer vs the reference way (Selenium WebDriver).

Both sides use the same Chromium binary and do the same work per page: load the page, read the
DOM text blocks (the same extraction script), take a full-page PNG screenshot, have it as a PIL
image, and compute the design metrics against the next page.

* ours: ``simulators.render.Renderer`` (warm browser, pages served from memory by the asset proxy,
  ``pool_size`` pages in parallel), screenshot bytes kept in memory.
* reference (as ColBench renders): one Selenium WebDriver per worker; each page is written to an
  HTML file, loaded with ``file://``, screenshotted full-page (CDP ``captureBeyondViewport``),
  written to disk and reopened with PIL. Offline here, so the page's Tailwind link and picsum
  images are rewritten to ``file://`` copies of the same files ours serves (pre-written, untimed).

Browsers are started and warmed up before timing; rounds alternate the two sides so load from
other processes hits both alike. Needs ``pip install selenium`` and Debian's ``chromium-driver``.

    .venv/bin/python bench/bench_frontend_render.py [--pages 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulators.paths import web_dir  # noqa: E402
from simulators.render import (  # noqa: E402
    DEFAULT_CHROMIUM,
    EXTRACT_SCRIPT,
    MAX_BLOCKS,
    MAX_SCREENSHOT_HEIGHT,
    TAILWIND_V2_FILE,
    VIEWPORT_HEIGHT,
    VIEWPORT_WIDTH,
    Renderer,
    RenderResult,
    placeholder_png,
)
from simulators.scoring.design import design_scores  # noqa: E402

DEV_FILE = REPO.parent / "shared" / "colbench" / "frontend_dev.jsonl"
SAMPLES = REPO / "assets" / "tasks" / "frontend_samples.jsonl"
CHROMEDRIVER = "/usr/bin/chromedriver"
TAILWIND_URL = re.compile(r"https://cdn\.jsdelivr\.net/npm/tailwindcss@2\.2\.19/dist/tailwind\.min\.css")
PICSUM_URL = re.compile(r"https://picsum\.photos/id/(\d+)/(\d+)/(\d+)(?=[\"'\s)])")


def load_pages(path: Path, count: int) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        pages = [json.loads(line)["ground_truth"] for line in fh if line.strip()]
    return (pages * (count // len(pages) + 1))[:count]


def score_neighbours(results: list[RenderResult]) -> None:
    """The scoring half of the work: decode each screenshot and compare it with the next page."""
    for i, result in enumerate(results):
        assert result.ok, result.error
        assert result.image is not None
        design_scores(result, results[(i + 1) % len(results)])


# -- ours --------------------------------------------------------------------------------------


def run_ours(renderer: Renderer, pages: list[str]) -> float:
    started = time.perf_counter()
    score_neighbours(renderer.render_many(pages))
    return len(pages) / (time.perf_counter() - started)


# -- reference: Selenium WebDriver ------------------------------------------------------------


def offline_copy(html: str, assets: Path) -> str:
    """The page with its Tailwind link and picsum images pointing at local files."""
    html = TAILWIND_URL.sub((web_dir() / TAILWIND_V2_FILE).as_uri(), html)

    def image_file(match: re.Match) -> str:
        key, width, height = match.group(1), int(match.group(2)), int(match.group(3))
        path = assets / f"picsum-{key}-{width}x{height}.png"
        if not path.exists():
            path.write_bytes(placeholder_png(key, width, height))
        return path.as_uri()

    return PICSUM_URL.sub(image_file, html)


def start_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = DEFAULT_CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--window-size={VIEWPORT_WIDTH},{VIEWPORT_HEIGHT}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    driver.set_page_load_timeout(30)
    return driver


def selenium_render(driver, html: str, workdir: Path, name: str) -> RenderResult:
    html_path, png_path = workdir / f"{name}.html", workdir / f"{name}.png"
    html_path.write_text(html, encoding="utf-8")
    driver.get(html_path.as_uri())
    dom = driver.execute_async_script(
        f"const done = arguments[arguments.length - 1]; ({EXTRACT_SCRIPT})(arguments[0]).then(done);", MAX_BLOCKS
    )
    height = min(max(int(dom["page_height"]), 1), MAX_SCREENSHOT_HEIGHT)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": VIEWPORT_WIDTH, "height": height, "scale": 1},
        },
    )
    png_path.write_bytes(base64.b64decode(shot["data"]))
    with Image.open(png_path) as image:
        rgb = image.convert("RGB")
    os.remove(html_path)
    png = png_path.read_bytes()
    result = RenderResult.from_extraction(dom, png, VIEWPORT_WIDTH, height)
    result._image = rgb
    return result


def run_selenium(drivers: list, pages: list[str], workdir: Path) -> float:
    results: list[RenderResult | None] = [None] * len(pages)

    def worker(index: int, driver) -> None:
        for i in range(index, len(pages), len(drivers)):
            results[i] = selenium_render(driver, pages[i], workdir, f"w{index}-{i}")

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i, d)) for i, d in enumerate(drivers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    score_neighbours(results)  # type: ignore[arg-type]
    return len(pages) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tasks", type=Path, default=DEV_FILE if DEV_FILE.is_file() else SAMPLES)
    args = parser.parse_args()
    if not Path(CHROMEDRIVER).is_file():
        raise SystemExit(f"{CHROMEDRIVER} is missing: apt-get install chromium-driver (bench-only dependency)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise SystemExit("selenium is not installed: .venv/bin/pip install selenium (bench-only dependency)") from None

    pages = load_pages(args.tasks, args.pages)
    print(f"{len(pages)} pages from {args.tasks}, viewport {VIEWPORT_WIDTH}x{VIEWPORT_HEIGHT}, {os.cpu_count()} CPUs")
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-frontend-") as tmp:
        workdir = Path(tmp)
        offline_pages = [offline_copy(page, workdir) for page in pages]
        configs = {
            "ours, 2 pages in parallel": ("ours", 2),
            "selenium, 1 driver (reference)": ("selenium", 1),
            "ours, 1 page at a time": ("ours", 1),
            "selenium, 2 drivers in threads": ("selenium", 2),
        }
        renderers = {n: Renderer(pool_size=n) for n in (1, 2)}
        drivers = [start_driver(), start_driver()]
        try:
            for renderer in renderers.values():  # warm: browser started, one page per context
                renderer.render_many(pages[: renderer.pool_size])
            for driver in drivers:
                selenium_render(driver, offline_pages[0], workdir, "warm")
            for round_no in range(1, args.rounds + 1):
                for label, (side, workers) in configs.items():
                    if side == "ours":
                        rate = run_ours(renderers[workers], pages)
                    else:
                        rate = run_selenium(drivers[:workers], offline_pages, workdir)
                    figures.setdefault(label, []).append(rate)
                    print(f"round {round_no}: {label:32s} {rate:6.2f} pages/s", flush=True)
        finally:
            for driver in drivers:
                driver.quit()
            for renderer in renderers.values():
                renderer.close()

    median = {label: statistics.median(rates) for label, rates in figures.items()}
    print("\nmedian pages/s:")
    for label, rate in median.items():
        print(f"  {label:32s} {rate:6.2f}")
    reference = median["selenium, 1 driver (reference)"]
    print(f"\nours (2 parallel) / selenium reference (1 driver): {median['ours, 2 pages in parallel'] / reference:.2f}x")
    print(f"ours (1 at a time) / selenium reference (1 driver): {median['ours, 1 page at a time'] / reference:.2f}x")
    print(f"ours (2 parallel) / selenium (2 drivers):           {median['ours, 2 pages in parallel'] / median['selenium, 2 drivers in threads']:.2f}x")


if __name__ == "__main__":
    main()
