"""Scoring: did the agent's final answer do what the hidden reference does?

What lives here (``simulators`` and everything above it may import this package):

* ``__init__``  this dispatcher: ``score_episodes`` and ``check_tasks`` by ``Task.kind``, so callers
  never care which kind an episode is; ``SCORERS``, ``TaskCheck``, ``by_scorer_summary``
* ``answers``   the code or page inside an agent's final message (``extract_code``, ``extract_html``)
* ``backend``   hidden tests run in the sandbox (``simulators.sandbox``), answer vs reference
* ``colbench``  the reference implementation's backend rules (``scoring="colbench"``)
* ``frontend``  both pages rendered (``simulators.render``), then CLIP and the design metrics
* ``design``    Design2Code-style metrics of two renders; ``colors`` the colour science they use
* ``differences`` the same comparison in words, for the text-only simulated human
* ``clip``      CLIP ViT-B/32 similarity of two screenshots, real weights only
  (``python -m simulators.scoring.clip --download`` fetches them once, online)

Score keys written to ``Episode.scores``:

* backend:  ``tests_passed`` (fraction of the 10 hidden tests), ``success`` (all passed),
  ``tests`` (one dict per test: name, call, expected, got, passed, error), ``sandbox`` (notes),
  ``scoring`` (whose rules: ``"ours"``, or ``"colbench"`` for the reference implementation's,
  see ``simulators.scoring.colbench``) and ``by_scorer`` (``{scorer: {tests_passed, success}}``
  for every scorer that has scored the episode). ``Episode.reward`` = ``tests_passed``, as in
  the paper.
* frontend: ``clip`` (only when real CLIP weights are present), ``design`` (overall design score)
  and its parts ``design_block_match``, ``design_text``, ``design_position``, ``design_color``,
  ``render_error`` when the answer failed to render. ``Episode.reward`` = ``clip`` when present,
  else ``design``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from simulators.domain import Episode, Task

# "ours": sandboxed and fair (the default). "colbench": the reference implementation's rules,
# for numbers comparable with the paper and HAL. Frontend scoring is the same under both.
SCORERS = ("ours", "colbench")


def check_scoring(scoring: str) -> str:
    """``scoring`` when it names a scorer; a ValueError saying which exist otherwise."""
    if scoring not in SCORERS:
        raise ValueError(f"scoring must be one of {', '.join(SCORERS)}, not {scoring!r}")
    return scoring


@dataclass
class TaskCheck:
    """Result of running a task's reference against itself."""

    task_id: str
    source: str
    ok: bool
    problems: list[str] = field(default_factory=list)


def check_tasks(tasks: Sequence[Task], scoring: str = "ours") -> list[TaskCheck]:
    """Self-check: every backend reference passes its own tests (under ``scoring``'s rules); every
    frontend reference renders and scores itself 1.0. Results come back in the order of ``tasks``."""
    check_scoring(scoring)
    by_kind: dict[str, list[int]] = {"backend": [], "frontend": []}
    for i, task in enumerate(tasks):
        by_kind[task.kind].append(i)
    results: list[TaskCheck | None] = [None] * len(tasks)
    for kind, indices in by_kind.items():
        if not indices:
            continue
        batch = [tasks[i] for i in indices]
        checks = _module(kind).check_tasks(batch, scoring) if kind == "backend" else _module(kind).check_tasks(batch)
        for i, check in zip(indices, checks):
            results[i] = check
    return [r for r in results if r is not None]


def score_episodes(episodes: Sequence[Episode], scoring: str = "ours") -> None:
    """Fill ``reward`` and ``scores`` of each episode in place (batched per kind); ``scoring``
    picks the backend scorer."""
    check_scoring(scoring)
    for kind in ("backend", "frontend"):
        batch = [e for e in episodes if e.task.kind == kind]
        if batch:
            if kind == "backend":
                _module(kind).score_episodes(batch, scoring)
            else:
                _module(kind).score_episodes(batch)


def by_scorer_summary(episodes: Sequence[Episode]) -> dict[str, dict]:
    """Per scorer recorded in ``scores["by_scorer"]``: episodes scored, mean tests passed and
    success rate -- both scorers' numbers side by side once a file has been scored both ways."""
    verdicts: dict[str, list[dict]] = {}
    for episode in episodes:
        for scorer, verdict in (episode.scores.get("by_scorer") or {}).items():
            if isinstance(verdict, dict) and isinstance(verdict.get("tests_passed"), (int, float)):
                verdicts.setdefault(scorer, []).append(verdict)
    return {
        scorer: {
            "n": len(found),
            "tests_passed": round(sum(float(v["tests_passed"]) for v in found) / len(found), 4),
            "success_rate": round(sum(bool(v.get("success")) for v in found) / len(found), 4),
        }
        for scorer, found in sorted(verdicts.items())
    }


def _module(kind: str):
    if kind == "backend":
        from simulators.scoring import backend

        return backend
    from simulators.scoring import frontend

    return frontend
