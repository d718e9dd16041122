"""Read and write ColBench task files (trajectory files: ``simulators.trajectories``).

Accepted task layouts (one JSON object per line):

* the published ColBench layout and ``../shared/colbench/*_dev.jsonl``:
  ``{problem_description, ground_truth, test_cases?, hidden_information?}``
* our own files in ``assets/tasks/`` add ``id`` and ``kind``.

The kind is taken from the row (``kind``), else from ``test_cases`` (backend tasks have them),
else from whether the reference looks like HTML. A malformed line never stops a load: it is
reported as ``file:line: reason`` in ``LoadReport.errors`` and the rest is read.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.domain import Task, TaskKind
from simulators.jsonl import jsonl_rows, write_jsonl

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
SAMPLE_TASKS_DIR = ASSETS_DIR / "tasks"



class TaskFileError(ValueError):
    """A task/trajectory file could not be read at all (missing, not JSONL, no valid line)."""


@dataclass
class LoadReport:
    """What a load produced: the items that parsed and one message per line that did not."""

    items: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _guess_kind(row: dict[str, Any]) -> TaskKind:
    kind = row.get("kind")
    if kind in ("backend", "frontend"):
        return kind
    if kind is not None:
        raise ValueError(f"'kind' must be 'backend' or 'frontend', not {kind!r}")
    if row.get("test_cases"):
        return "backend"
    reference = str(row.get("ground_truth", "")).lstrip().lower()
    if reference.startswith(("<html", "<!doctype", "<body", "<div", "<")):
        return "frontend"
    return "backend"


def task_from_row(row: dict[str, Any], *, kind: TaskKind | None = None, source: str = "") -> Task:
    """Build a Task from one ColBench-format row; raises ValueError saying what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    required = ("problem_description",) if row.get("free_form") else ("problem_description", "ground_truth")
    for key in required:
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"missing or empty '{key}'")
    kind = kind or _guess_kind(row)
    tests = row.get("test_cases") or {}
    if isinstance(tests, list):  # some exports store the calls as a list
        tests = {f"test{i + 1}": call for i, call in enumerate(tests)}
    if not isinstance(tests, dict) or not all(isinstance(v, str) for v in tests.values()):
        raise ValueError("'test_cases' must map test names to call expressions (strings)")
    if kind == "backend" and not tests and not row.get("free_form"):
        raise ValueError("backend task has no 'test_cases'")
    return Task(
        id=str(row.get("id") or Task.make_id(kind, row["problem_description"], row.get("ground_truth") or "")),
        kind=kind,
        problem_description=row["problem_description"],
        ground_truth=row.get("ground_truth") or "",
        hidden_information=str(row.get("hidden_information") or ""),
        test_cases={str(k): v for k, v in tests.items()},
        source=source,
    )


def open_checked(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such file")
    return path


def load_tasks(path: str | os.PathLike, *, kind: TaskKind | None = None) -> LoadReport:
    """Read a task file (JSONL, or a JSON list). Malformed lines go to ``report.errors``."""
    path = open_checked(path)
    report = LoadReport()
    if path.suffix == ".json":  # a JSON array of task objects
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TaskFileError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(rows, list):
            raise TaskFileError(f"{path}: expected a JSON list of tasks")
        numbered: Iterable = ((i + 1, r, None) for i, r in enumerate(rows))
        unit = "item"
    else:
        numbered = jsonl_rows(path)
        unit = "line"
    for lineno, row, error in numbered:
        where = f"{path}:{lineno}" if unit == "line" else f"{path}[item {lineno}]"
        if error is None:
            try:
                report.items.append(task_from_row(row, kind=kind, source=where))
                continue
            except ValueError as exc:
                error = str(exc)
        report.errors.append(f"{where}: {error}")
    if not report.items and report.errors:
        raise TaskFileError(f"{path}: no valid task; first problem: {report.errors[0]}")
    return report


def sample_task_files() -> list[Path]:
    return sorted(SAMPLE_TASKS_DIR.glob("*.jsonl"))


def load_sample_tasks(kind: TaskKind | None = None) -> list[Task]:
    """Our own authored tasks shipped in ``assets/tasks/``."""
    tasks: list[Task] = []
    for path in sample_task_files():
        tasks.extend(t for t in load_tasks(path).items if kind is None or t.kind == kind)
    return tasks


def split_paths(paths: str) -> list[str]:
    """A comma-separated list of paths, as the commands take them (blanks dropped)."""
    return [p.strip() for p in paths.split(",") if p.strip()]


def read_task_file(paths: str, kind: str = "", limit: int = 0) -> list[Task]:
    """The tasks a command was pointed at: task files (comma-separated), ``samples`` for our own.

    Malformed lines are reported on stderr (file and line) and skipped; ``kind`` keeps one kind,
    ``limit`` the first N tasks (0 = all).
    """
    tasks: list[Task] = []
    for path in split_paths(paths):
        if path == "samples":
            tasks += load_sample_tasks()
            continue
        report = load_tasks(path)
        for error in report.errors:
            print(f"skipped {error}", file=sys.stderr)
        tasks += report.items
    tasks = [t for t in tasks if not kind or t.kind == kind]
    return tasks[:limit] if limit else tasks


def write_tasks(tasks: Iterable[Task], path: str | os.PathLike) -> None:
    write_jsonl(path, (task.to_colbench() for task in tasks))
