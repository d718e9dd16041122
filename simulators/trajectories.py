"""Read and write sweet_rl trajectory files: one episode per line (``task``, ``dialogue_history``,
``answer``, ``reward``), as rollouts append them and training reads them. Task files are
``simulators.tasks``; a malformed line is reported the same way (``file:line: reason``)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from simulators.domain import Episode, TaskKind
from simulators.jsonl import jsonl_rows, write_jsonl
from simulators.tasks import LoadReport, open_checked


def load_episodes(path: str | os.PathLike, *, kind: TaskKind | None = None) -> LoadReport:
    """Read a sweet_rl trajectory JSONL file ({task, dialogue_history, answer, reward})."""
    path = open_checked(path)
    report = LoadReport()
    for lineno, row, error in jsonl_rows(path):
        where = f"{path}:{lineno}"
        if error is None:
            try:
                report.items.append(Episode.from_sweet(row, kind=kind, source=where))
                continue
            except (ValueError, TypeError) as exc:
                error = str(exc)
        report.errors.append(f"{where}: {error}")
    return report


def append_episode(episode: Episode, path: str | os.PathLike) -> None:
    """Append one trajectory line and flush it, so a killed rollout keeps what it finished."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(episode.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_episodes(episodes: Iterable[Episode], path: str | os.PathLike) -> None:
    """Rewrite a trajectory file atomically (write to a temp file, then rename)."""
    write_jsonl(path, (episode.to_sweet() for episode in episodes))
