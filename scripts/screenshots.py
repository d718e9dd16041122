"""Screenshots of every tab of the app, for docs/screenshots/ (run again whenever the UI changes).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Starts the real app on a free port with scripted agents (known replies, so the pictures do not
depend on a model), a fresh session database and this machine's $COLLAB_HOME (its Tailwind files),
then drives Chromium through Collaborate (a sample task to a scored answer), Compare (a blind
battle), Leaderboard, Data (that session replayed), Train and Chat, saving one PNG per view.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from app_process import browser_page, running_app, wait_for_text  # noqa: E402

from simulators.domain import ANSWER_MARKER  # noqa: E402
from simulators.tasks import load_sample_tasks  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = next(t for t in load_sample_tasks() if t.kind == "backend")
    question = "Before I write it: should the function handle an empty input, and what should it return then?"
    answer = f"Thanks, that is all I need.\n\n{ANSWER_MARKER}\n```python\n{task.ground_truth.strip()}\n```"
    work = Path(tempfile.mkdtemp(prefix="collab-screenshots-"))
    scripts = {"agent": [question, answer], "model-a": [question, answer], "model-b": [question, answer]}
    for name, replies in scripts.items():
        (work / f"{name}.json").write_text(json.dumps(replies))
    arena = ",".join(f"scripted:{work / name}.json" for name in ("model-a", "model-b"))
    home = Path(os.environ.get("COLLAB_HOME", Path.home() / ".collab-rl"))
    shots = []
    with running_app(home, "--model", f"scripted:{work / 'agent.json'}", "--arena-models", arena,
                     "--db", str(work / "collab.sqlite")) as app, browser_page(1400, 900) as page:
        def shot(name: str) -> None:
            path = out / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            shots.append(path)

        page.goto(app.url, wait_until="load")
        page.wait_for_selector("#start", timeout=60_000)
        page.locator("#task-pick input").click()
        page.locator("#task-pick input").fill(task.problem_description[:30])
        page.get_by_role("option").first.click()
        page.locator("#start").click()
        wait_for_text(page, "#collab-chat", "should the function handle")
        wait_for_text(page, "#collab-score", "Round 1/10")  # the turn's last view: not a picture mid-turn
        shot("collaborate")
        page.locator("#collab-input textarea").fill("Yes: an empty input gives the empty result.")
        page.locator("#collab-send").click()
        wait_for_text(page, "#collab-score", "of tests passed")
        shot("collaborate-scored")

        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-task input").click()
        page.locator("#compare-task input").fill(task.problem_description[:30])
        page.get_by_role("option").first.click()
        page.locator("#compare-start").click()
        page.wait_for_selector("#compare-vote-a:not([disabled])", timeout=60_000)
        shot("compare")

        for tab, ready in (("Leaderboard", "#leaderboard-table"), ("Data", "#sessions-table"),
                           ("Train", "#train-algorithm"), ("Chat", "#chat-input")):
            page.get_by_role("tab", name=tab).click()
            page.locator(ready).first.wait_for(timeout=30_000)
            page.wait_for_timeout(2000)  # a script, not a test: let the tab's refresh land before the picture
            if tab == "Data":  # the replay of the scored session, as a person opens it
                page.locator("#sessions-table .cell-wrap:visible").filter(has_text="scored").first.click()
                wait_for_text(page, "#replay-summary", "Reward")
            shot(tab.lower())
    for path in shots:
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
