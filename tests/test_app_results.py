"""What the app shows of results (issue 18): the backend score table and the Data tab's exports,
in the real app and a real browser, with a scripted agent and a fresh COLLAB_HOME."""

from __future__ import annotations

import zipfile
from urllib.parse import urljoin

import pytest
from app_process import browser_page, start_task, wait_for_text
from test_app_collaborate import only_session, scripted_app

from simulators.domain import ANSWER_MARKER

pytestmark = pytest.mark.slow

WRONG = f"{ANSWER_MARKER}\n```python\ndef sum_even(xs):\n    return 0\n```"
# The reply hit the token cap inside its code: the block is never closed and the code is cut.
CUT = f"{ANSWER_MARKER}\n```python\nimport math\ndef sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0 and"


def test_the_score_table_shows_expected_values_and_verdicts_as_text(tmp_path):
    with scripted_app(tmp_path, [WRONG, CUT]) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-score", "0% of tests passed")
        table = page.locator("#collab-score table")
        rows = table.locator("tbody tr").all_inner_texts()
        assert len(rows) == 10 and all("fail" in row for row in rows)
        expected = table.locator("tbody tr td:nth-child(3)").all_inner_texts()
        assert expected[0].strip() == "2"  # the reference's value: sum_even([-1, 0, 1, 2])
        score = page.locator("#collab-score").inner_text()
        assert "✅" not in score and "❌" not in score and "not solved" in score  # no emoji font in Debian's Chromium

        start_task(page, app.url, "Sum the even numbers")  # the cut answer is run: its SyntaxError shows
        wait_for_text(page, "#collab-score", "unclosed code block")
        score = page.locator("#collab-score").inner_text()
        assert "no Python code found" not in score and "0% of tests passed" in score
        table = page.locator("#collab-score table")
        assert all("SyntaxError" in row for row in table.locator("tbody tr").all_inner_texts())
        assert table.locator("tbody tr td:nth-child(3)").all_inner_texts()[0].strip() == "2"
        assert "None" not in table.inner_text()


def test_exports_with_no_preference_pairs_load_and_say_so(tmp_path):
    from datasets import load_from_disk

    with scripted_app(tmp_path, [WRONG]) as app, browser_page() as page:
        start_task(page, app.url, "Sum the even numbers")
        wait_for_text(page, "#collab-score", "of tests passed")
        page.get_by_role("tab", name="Data").click()
        page.get_by_text("HF dataset (zip)").click()
        page.locator("#export").click()
        wait_for_text(page, "#export-note", "Exported 1 session(s) and 0 preference pair(s)")
        assert "preferences split is empty" in page.locator("#export-note").inner_text()
        link = page.locator("#export-file a").first
        archive = tmp_path / "download.zip"  # fetched as the browser's download link would
        archive.write_bytes(page.request.get(urljoin(app.url, link.get_attribute("href"))).body())
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp_path / "dataset")
        dataset = load_from_disk(str(tmp_path / "dataset"))
        assert (len(dataset["trajectories"]), len(dataset["preferences"])) == (1, 0)
        assert dataset["trajectories"][0]["session_id"] == only_session(tmp_path / "collab.sqlite").id

        page.get_by_text("TRL preference pairs").click()
        page.locator("#export").click()
        wait_for_text(page, "#export-note", "No preference pairs yet")
        page.locator("#export-file a").wait_for(state="detached")  # no 0-byte file to download
