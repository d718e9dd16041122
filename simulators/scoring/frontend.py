"""Frontend scoring: render the answer and the reference page, then score them.

Reward (as in ColBench): the CLIP cosine similarity between screenshots of the agent's page and
the reference page when real CLIP weights are present (``simulators.scoring.clip``), else the
design score (``simulators.scoring.design``). An answer with no ``<html>``/``<body>`` block, or
one that fails to render, is scored as ColBench does: a black image for CLIP and 0 for every
design metric.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

from PIL import Image

from simulators.domain import Episode, Task
from simulators.render import Renderer, RenderResult, shared_renderer
from simulators.scoring import TaskCheck
from simulators.scoring.answers import extract_html
from simulators.scoring.design import DesignScores, design_scores

FRONTEND_SCORE_KEYS = (
    "clip",
    "clip_unavailable",
    "design",
    "design_block_match",
    "design_text",
    "design_position",
    "design_color",
    "render_error",
    "reference_render_error",
)
NO_HTML_ERROR = "the answer contains no <html>...</html> or <body>...</body> block"
CHECK_CHUNK = 32  # references rendered per batch in check_tasks (bounds memory on 600 tasks)


class _ReferenceCache:
    """Reference renders by (task id, sha256 of the reference HTML); only successes are kept."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], RenderResult] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(task: Task) -> tuple[str, str]:
        return task.id, hashlib.sha256(task.ground_truth.encode("utf-8", errors="replace")).hexdigest()

    def renders(self, tasks: Sequence[Task], renderer: Renderer) -> list[RenderResult]:
        keys = [self.key(task) for task in tasks]
        with self._lock:
            found = {key: self._items[key] for key in keys if key in self._items}
            for key in found:
                self._items.move_to_end(key)
        todo = {key: task.ground_truth for key, task in zip(keys, tasks) if key not in found}
        for key, result in zip(todo, renderer.render_many(list(todo.values()))):
            found[key] = result
            if result.ok:
                with self._lock:
                    self._items[key] = result
                    while len(self._items) > self.capacity:
                        self._items.popitem(last=False)
        return [found[key] for key in keys]


reference_cache = _ReferenceCache()


def reference_render(task: Task, *, renderer: Renderer | None = None) -> RenderResult:
    """The render of a task's reference page, from the cache when it has been rendered before
    (the simulated human and the scorer both need it, every turn)."""
    return reference_cache.renders([task], renderer or shared_renderer())[0]


def _clip(scorer_and_reason: tuple | None):
    if scorer_and_reason is not None:
        return scorer_and_reason
    from simulators.scoring.clip import default_scorer

    return default_scorer()


def score_episodes(
    episodes: Sequence[Episode],
    *,
    renderer: Renderer | None = None,
    clip: tuple | None = None,
) -> None:
    """Render each episode's answer and its task's reference, and fill ``scores`` and ``reward``.

    ``clip`` is ``(ClipScorer | None, reason)``; by default the process-wide scorer (real
    weights only). Previous frontend score keys are replaced, other keys are kept.
    """
    if not episodes:
        return
    renderer = renderer or shared_renderer()
    scorer, clip_reason = _clip(clip)
    answers_html = [extract_html(episode.answer) for episode in episodes]
    references = reference_cache.renders([episode.task for episode in episodes], renderer)
    rendered = iter(renderer.render_many([html for html in answers_html if html is not None]))
    answers = [next(rendered) if html is not None else None for html in answers_html]

    clip_values: list[float | None] = [None] * len(episodes)
    if scorer is not None:
        black = Image.new("RGB", (224, 224), "black")  # ColBench's image for an answer that did not render
        pairs = [
            ((ans.png if ans is not None and ans.ok else black), ref.png)
            for ans, ref in zip(answers, references)
            if ref.ok
        ]
        values = iter(scorer.similarities(pairs))
        clip_values = [next(values) if ref.ok else 0.0 for ref in references]

    for episode, html, answer, reference, clip_value in zip(episodes, answers_html, answers, references, clip_values):
        scores: dict = {}
        if html is None:
            scores["render_error"] = NO_HTML_ERROR
        elif not answer.ok:
            scores["render_error"] = answer.error
        if reference.ok:
            scores.update(design_scores(answer, reference).as_scores())
        else:
            scores["reference_render_error"] = reference.error
            scores.update(DesignScores.zero().as_scores())
        if clip_value is not None:
            scores["clip"] = clip_value
        else:
            scores["clip_unavailable"] = clip_reason
        for key in FRONTEND_SCORE_KEYS:
            episode.scores.pop(key, None)
        episode.scores.update(scores)
        episode.reward = scores.get("clip", scores["design"])


def check_tasks(
    tasks: Sequence[Task],
    *,
    renderer: Renderer | None = None,
    clip: tuple | None = None,
) -> list[TaskCheck]:
    """Each reference must render and score 1.0 against itself on every design metric (and on
    CLIP when real weights are present). Results come back in the order of ``tasks``."""
    renderer = renderer or shared_renderer()
    scorer, _ = _clip(clip)
    checks: list[TaskCheck] = []
    for start in range(0, len(tasks), CHECK_CHUNK):
        chunk = list(tasks[start : start + CHECK_CHUNK])
        renders = renderer.render_many([task.ground_truth for task in chunk])
        self_clip: list[float | None] = [None] * len(chunk)
        if scorer is not None:
            ok_renders = [r for r in renders if r.ok]
            values = iter(scorer.similarities([(r.png, r.png) for r in ok_renders]))
            self_clip = [next(values) if r.ok else None for r in renders]
        for task, render, clip_value in zip(chunk, renders, self_clip):
            problems = []
            if not render.ok:
                problems.append(f"reference does not render: {render.error}")
            else:
                scores = design_scores(render, render).as_scores()
                problems += [f"{name} of the reference against itself is {value:.4f}, not 1.0" for name, value in scores.items() if abs(value - 1.0) > 1e-9]
                if clip_value is not None and clip_value < 0.9999:
                    problems.append(f"CLIP similarity of the reference with itself is {clip_value:.4f}, not 1.0")
            checks.append(TaskCheck(task_id=task.id, source=task.source, ok=not problems, problems=problems))
    return checks
