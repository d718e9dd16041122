"""Score episodes and self-check tasks, whatever their kind.

Backend scoring lives in ``simulators.backend_eval`` (sandboxed test execution), frontend scoring
in ``simulators.frontend_eval`` (rendering, CLIP, design metrics). Both expose the same two
functions, and this module dispatches by ``Task.kind`` so callers never need to care.

Score keys written to ``Episode.scores``:

* backend:  ``tests_passed`` (fraction of the 10 hidden tests), ``success`` (all passed),
  ``tests`` (one dict per test: name, call, expected, got, passed, error), ``sandbox`` (notes).
  ``Episode.reward`` = ``tests_passed``, as in the paper.
* frontend: ``clip`` (only when real CLIP weights are present), ``design`` (overall design score)
  and its parts ``design_block_match``, ``design_text``, ``design_position``, ``design_color``,
  ``render_error`` when the answer failed to render. ``Episode.reward`` = ``clip`` when present,
  else ``design``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from simulators.domain import Episode, Task


@dataclass
class TaskCheck:
    """Result of running a task's reference against itself."""

    task_id: str
    source: str
    ok: bool
    problems: list[str] = field(default_factory=list)


def check_tasks(tasks: Sequence[Task]) -> list[TaskCheck]:
    """Self-check: every backend reference passes its own tests; every frontend reference renders
    and scores itself 1.0. Results come back in the order of ``tasks``."""
    by_kind: dict[str, list[int]] = {"backend": [], "frontend": []}
    for i, task in enumerate(tasks):
        by_kind[task.kind].append(i)
    results: list[TaskCheck | None] = [None] * len(tasks)
    for kind, indices in by_kind.items():
        if not indices:
            continue
        module = _module(kind)
        for i, check in zip(indices, module.check_tasks([tasks[i] for i in indices])):
            results[i] = check
    return [r for r in results if r is not None]


def score_episodes(episodes: Sequence[Episode]) -> None:
    """Fill ``reward`` and ``scores`` of each episode in place (batched per kind)."""
    for kind in ("backend", "frontend"):
        batch = [e for e in episodes if e.task.kind == kind]
        if batch:
            _module(kind).score_episodes(batch)


def _module(kind: str):
    if kind == "backend":
        from simulators import backend_eval

        return backend_eval
    from simulators import frontend_eval

    return frontend_eval
