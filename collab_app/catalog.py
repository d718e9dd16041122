"""The tasks a person can pick in the app: our samples, ``--tasks`` files, uploads, free-form."""

from __future__ import annotations

import hashlib
import json
import random
import textwrap
import threading
from pathlib import Path

from simulators.domain import Task
from simulators.tasks import TaskFileError, load_sample_tasks, load_tasks

MAX_UPLOAD_BYTES = 20_000_000


class TaskCatalog:
    def __init__(self, task_files: list[str] | None = None):
        self._tasks: dict[str, Task] = {}
        self._lock = threading.Lock()
        self.load_errors: list[str] = []
        self.add(load_sample_tasks())
        for path in task_files or []:
            report = load_tasks(path)  # a bad --tasks file stops start-up with a clear message
            self.load_errors += report.errors
            self.add(report.items)

    def add(self, tasks: list[Task]) -> None:
        with self._lock:
            for task in tasks:
                self._tasks[task.id] = task

    def add_upload(self, path: str) -> tuple[int, list[str], list[str]]:
        """Validate and add an uploaded ColBench file; returns (tasks added, line-numbered errors of
        the lines skipped, tasks renamed).

        An upload never replaces a loaded task: a task whose id is taken by a different one (an
        ``id`` field may name any task, hidden reference included) is added under an id of its
        own content, and the third list says so."""
        if Path(path).stat().st_size > MAX_UPLOAD_BYTES:
            raise TaskFileError(f"the file is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB")
        report = load_tasks(path)
        name = Path(path).name
        renamed = []
        with self._lock:
            for task in report.items:
                task.source = task.source.replace(str(path), name)  # the upload's own name, not Gradio's temp path
                taken = self._tasks.get(task.id)
                if taken is not None and _content(taken) != _content(task):
                    digest = hashlib.sha1(json.dumps(_content(task), default=str).encode()).hexdigest()[:8]
                    new_id = f"{task.id}-upload-{digest}"
                    renamed.append(f"{task.source}: id {task.id!r} belongs to another task; added as {new_id!r}")
                    task.id = new_id
                self._tasks.setdefault(task.id, task)
        return len(report.items), [e.replace(str(path), name) for e in report.errors], renamed

    def get(self, task_id: str) -> Task:
        with self._lock:
            if task_id not in self._tasks:
                raise KeyError(f"unknown task {task_id!r}")
            return self._tasks[task_id]

    def choices(self, kind: str | None = None) -> list[tuple[str, str]]:
        """(label, id) pairs for a dropdown."""
        with self._lock:
            tasks = [t for t in self._tasks.values() if kind in (None, "", "any", t.kind)]
        # Cut at a word, not mid-word, with an ellipsis that says there is more.
        return [(f"[{t.kind}] {textwrap.shorten(t.problem_description, 80, placeholder=' …')}", t.id) for t in tasks]

    def random(self, kind: str | None = None, rng: random.Random | None = None) -> Task:
        ids = [task_id for _, task_id in self.choices(kind)]
        if not ids:
            raise KeyError("no task of that kind is loaded")
        return self.get((rng or random).choice(ids))

    def __len__(self) -> int:
        return len(self._tasks)


def _content(task: Task) -> tuple:
    return (task.problem_description, task.ground_truth, task.kind, sorted(task.test_cases.items()),
            task.hidden_information)


def free_form_task(description: str, kind: str) -> Task:
    """A task the person types: no reference, so the person's rating is the score."""
    return Task(id=Task.make_id(kind, description, "free-form"), kind=kind, problem_description=description,
                ground_truth="", hidden_information="(free-form task: only the person knows what they want)",
                source="free-form")
