"""Run the real app in a subprocess and drive it with a real Chromium (for the browser tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/lib/chromium/chromium"
OFFLINE_RULES = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """``python -m collab_app ARGS`` on a free port, with its own COLLAB_HOME. With ``holds`` (a
    folder), the app's slow steps wait for the test's word first (``tests/held_app.py``)."""

    def __init__(self, home: Path, *args: str, holds: Path | None = None):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = home / f"app-{self.port}.log"
        env = {**os.environ, "COLLAB_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False",
               "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        launcher = ["-m", "collab_app"]
        if holds is not None:
            env["COLLAB_HOLDS"] = str(holds)
            launcher = [str(REPO / "tests" / "held_app.py")]
        self.proc = subprocess.Popen([sys.executable, *launcher, "--port", str(self.port), *args],
                                     cwd=REPO, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the app did not come up in {timeout}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextmanager
def running_app(home: Path, *args: str, holds: Path | None = None):
    app = AppProcess(home, *args, holds=holds)
    try:
        yield app
    finally:
        app.kill()


@contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", OFFLINE_RULES])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def start_task(page, url: str, text: str) -> None:
    page.goto(url, wait_until="load")
    page.wait_for_selector("#start", timeout=60_000)
    page.locator("#task-pick input").click()
    page.locator("#task-pick input").fill(text)
    page.get_by_role("option").filter(has_text=text).first.click()
    page.locator("#start").click()


def agent_messages(page) -> list[str]:
    return page.locator("#collab-chat .message.bot").all_inner_texts()


def wait_for_text(page, selector: str, text: str, timeout: float = 60_000) -> None:
    page.locator(selector).filter(has_text=text).first.wait_for(timeout=timeout)
