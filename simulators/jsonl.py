"""JSON Lines, one way for the whole project.

* ``jsonl_rows``: files people give us (tasks, trajectories, preferences): every line numbered,
  a bad or oversized line reported, not raised, so a caller can say which line is wrong;
* ``read_jsonl``: files we wrote ourselves (logs, the registry's history, sampled turns): strict;
* ``write_jsonl``: an atomic rewrite (a temp file, then a rename: a killed writer leaves the old
  file), and ``append_jsonl`` for logs that grow a line at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MAX_LINE_BYTES = 2_000_000  # a task or trajectory line larger than this is refused, not parsed


def jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line number, parsed object or None, error or None); blank lines are skipped."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(raw) > MAX_LINE_BYTES:
                yield lineno, None, f"line is {len(raw):,} bytes (limit {MAX_LINE_BYTES:,})"
                continue
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                yield lineno, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})"


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Every row of a file we wrote; a file that does not exist (yet) has none."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: str | os.PathLike, row: Any) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
