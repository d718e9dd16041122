"""``python -m collab_app`` whose slow steps wait for the test's word: transient notices, seen for sure.

    COLLAB_HOLDS=DIR python tests/held_app.py [APP FLAGS]

A notice that lasts while a model loads or an answer is scored is gone in a fraction of a second
with a scripted model, so a test cannot tell "never shown" from "shown and gone". Here each slow
step (``load``, ``render``, ``score``, ``export``) first waits until the file ``DIR/STEP`` exists,
then runs for real. The test sees the notice in the page, creates the file, and the step goes on.
A release stays: every later run of that step passes at once. ``export`` holds after the export
has said its first progress line, so the test can see that line.

``stream`` is held only when the test asks for it (a file ``DIR/stream.hold`` at start): a
scripted reply then pauses after its first word until ``DIR/stream`` exists or the app sets the
stream's cancel event (what Stop does), and when the stream ends the number of words the model
produced is written to ``DIR/streamed`` -- how a test sees that Stop stopped the model itself.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HOLDS = Path(os.environ["COLLAB_HOLDS"])
HOLD_LIMIT_S = 120  # a test that never releases fails on its own waits; the app does not hang past it


def wait_for_release(step: str, cancel=None) -> None:
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not (HOLDS / step).exists() and not (cancel is not None and cancel.is_set()) \
            and time.monotonic() < deadline:
        time.sleep(0.05)


def held(step: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        wait_for_release(step)
        return fn(*args, **kwargs)
    return wrapper


def held_after_first_progress(fn):
    @functools.wraps(fn)
    def wrapper(*args, progress=None, **kwargs):
        def report(*line):
            if progress is not None:
                progress(*line)
            wait_for_release("export")
        return fn(*args, progress=report, **kwargs)
    return wrapper


def held_stream(stream_chat):
    @functools.wraps(stream_chat)
    def wrapper(model, messages, config=None, cancel=None):
        produced = 0
        try:
            for piece in stream_chat(model, messages, config, cancel):
                produced += 1
                yield piece
                if produced == 1:
                    wait_for_release("stream", cancel)
        finally:
            (HOLDS / "streamed").write_text(str(produced))
    return wrapper


def install_holds() -> None:
    import collab_app.model_slot
    import collab_app.session
    import collab_app.tabs.data
    import simulators.scoring

    collab_app.model_slot.load_model = held("load", collab_app.model_slot.load_model)
    collab_app.session.render_and_store = held("render", collab_app.session.render_and_store)
    simulators.scoring.score_episodes = held("score", simulators.scoring.score_episodes)  # imported at each use
    collab_app.tabs.data.export = held_after_first_progress(collab_app.tabs.data.export)
    if (HOLDS / "stream.hold").exists():
        import simulators.llm.scripted

        scripted = simulators.llm.scripted.ScriptedModel
        scripted.stream_chat = held_stream(scripted.stream_chat)


if __name__ == "__main__":
    install_holds()
    from collab_app.cli import main

    sys.exit(main())
