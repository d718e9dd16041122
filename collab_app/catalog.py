"""The tasks a person can pick in the app: our samples, ``--tasks`` files, uploads, free-form.

Loaded tasks (samples and ``--tasks`` files) are every client's; an upload is its uploader's only
(issue 17): it lives under the browser session that sent it, so no other client can list, pick or
read its hidden reference, and it is forgotten when that session ends."""

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
        self._uploads: dict[str, dict[str, Task]] = {}  # owner (a browser session) -> its uploads
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

    def add_upload(self, path: str, owner: str) -> tuple[int, list[str], list[str]]:
        """Validate and add an uploaded ColBench file for ``owner`` alone; returns (tasks added,
        line-numbered errors of the lines skipped, tasks renamed).

        An upload never replaces a task: one whose id is taken by a different task (an ``id`` field
        may name any task, hidden reference included) is added under an id of its own content, and
        the third list says so."""
        if Path(path).stat().st_size > MAX_UPLOAD_BYTES:
            raise TaskFileError(f"the file is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB")
        report = load_tasks(path)
        name = Path(path).name
        renamed = []
        with self._lock:
            mine = self._uploads.setdefault(owner, {})
            for task in report.items:
                task.source = task.source.replace(str(path), name)  # the upload's own name, not Gradio's temp path
                taken = self._tasks.get(task.id) or mine.get(task.id)
                if taken is not None and _content(taken) != _content(task):
                    digest = hashlib.sha1(json.dumps(_content(task), default=str).encode()).hexdigest()[:8]
                    new_id = f"{task.id}-upload-{digest}"
                    renamed.append(f"{task.source}: id {task.id!r} belongs to another task; added as {new_id!r}")
                    task.id = new_id
                if task.id not in self._tasks:
                    mine.setdefault(task.id, task)
        return len(report.items), [e.replace(str(path), name) for e in report.errors], renamed

    def forget(self, owner: str) -> None:
        """Drop ``owner``'s uploads (its browser session ended)."""
        with self._lock:
            self._uploads.pop(owner, None)

    def get(self, task_id: str, owner: str | None = None) -> Task:
        """A loaded task, or one of ``owner``'s uploads."""
        with self._lock:
            task = self._tasks.get(task_id) or self._uploads.get(owner, {}).get(task_id)
        if task is None:
            raise KeyError(f"unknown task {task_id!r}")
        return task

    def choices(self, kind: str | None = None, owner: str | None = None) -> list[tuple[str, str]]:
        """(label, id) pairs for a dropdown: the loaded tasks, then ``owner``'s uploads."""
        with self._lock:
            tasks = [t for t in [*self._tasks.values(), *self._uploads.get(owner, {}).values()]
                     if kind in (None, "", "any", t.kind)]
        # Cut at a word, not mid-word, with an ellipsis that says there is more.
        return [(f"[{t.kind}] {textwrap.shorten(t.problem_description, 80, placeholder=' …')}", t.id) for t in tasks]

    def random(self, kind: str | None = None, rng: random.Random | None = None, owner: str | None = None) -> Task:
        ids = [task_id for _, task_id in self.choices(kind, owner)]
        if not ids:
            raise KeyError("no task of that kind is loaded")
        return self.get((rng or random).choice(ids), owner)

    def __len__(self) -> int:
        """The loaded tasks (uploads are counted by their owners' ``choices``)."""
        return len(self._tasks)


def _content(task: Task) -> tuple:
    return (task.problem_description, task.ground_truth, task.kind, sorted(task.test_cases.items()),
            task.hidden_information)


def free_form_task(description: str, kind: str) -> Task:
    """A task the person types: no reference, so the person's rating is the score."""
    return Task(id=Task.make_id(kind, description, "free-form"), kind=kind, problem_description=description,
                ground_truth="", hidden_information="(free-form task: only the person knows what they want)",
                source="free-form")
