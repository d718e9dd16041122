"""The one domain model shared by the simulators, training and the app: Task, Turn, Episode.

Role names follow the paper: the *agent* (the LLM being trained) collaborates with the *human*
(a real person in the app, or an LLM simulator holding the hidden information). On the wire
(sweet_rl trajectory JSONL, chat templates) the agent is ``assistant`` and the human is ``user``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

TaskKind = Literal["backend", "frontend"]
Role = Literal["agent", "human"]

MAX_ROUNDS = 10  # ColBench: at most 10 agent turns per episode
ANSWER_MARKER = "I WANT TO ANSWER:"

WIRE_ROLE = {"agent": "assistant", "human": "user"}
ROLE_FROM_WIRE = {"assistant": "agent", "user": "human", "agent": "agent", "human": "human"}


@dataclass
class Task:
    """One ColBench task.

    ``ground_truth`` is the reference solution (a Python function for backend, an HTML page for
    frontend). ``hidden_information`` is what the simulated human is told (for ColBench backend
    tasks it is the reference function itself; for frontend tasks the human sees the rendered
    reference page, so it defaults to the reference HTML). ``test_cases`` maps test names to call
    expressions (backend only).
    """

    id: str
    kind: TaskKind
    problem_description: str
    ground_truth: str
    hidden_information: str = ""
    test_cases: dict[str, str] = field(default_factory=dict)
    source: str = field(default="", compare=False)  # file:line it was read from

    def __post_init__(self) -> None:
        if self.kind not in ("backend", "frontend"):
            raise ValueError(f"task kind must be 'backend' or 'frontend', not {self.kind!r}")
        if not self.hidden_information:
            self.hidden_information = self.ground_truth

    @property
    def privileged_information(self) -> str:
        """Training-time information the SWEET critic sees (paper §4.2): the reference solution."""
        return self.ground_truth

    def to_colbench(self) -> dict[str, Any]:
        """The published ColBench task layout (plus our ``id``/``kind``, which readers ignore)."""
        row: dict[str, Any] = {
            "problem_description": self.problem_description,
            "ground_truth": self.ground_truth,
        }
        if self.kind == "backend":
            row["test_cases"] = dict(self.test_cases)
            row["hidden_information"] = self.hidden_information
        row["id"] = self.id
        row["kind"] = self.kind
        if self.free_form:
            row["free_form"] = True
        return row

    @property
    def free_form(self) -> bool:
        """A task a person typed in the app: no reference, so a rating is its only score."""
        return not self.ground_truth

    @staticmethod
    def make_id(kind: str, problem_description: str, ground_truth: str) -> str:
        """A stable id from content, so the same task read from two files gets the same id."""
        digest = hashlib.sha1(f"{kind}\0{problem_description}\0{ground_truth}".encode()).hexdigest()
        return f"{kind[0]}-{digest[:12]}"


@dataclass
class Turn:
    """One message of an episode.

    For agent turns, ``input`` is the exact formatted prompt the model saw and ``output`` its raw
    generation (training needs both to recompute log-probs); ``content`` is what was shown.
    """

    role: Role
    content: str
    input: str | None = None
    output: str | None = None
    model: str | None = None
    latency_s: float | None = None

    def __post_init__(self) -> None:
        if self.role not in ("agent", "human"):
            raise ValueError(f"turn role must be 'agent' or 'human', not {self.role!r}")

    def to_wire(self) -> dict[str, Any]:
        row: dict[str, Any] = {"role": WIRE_ROLE[self.role], "content": self.content}
        if self.role == "agent":
            row["input"] = self.input
            row["output"] = self.output if self.output is not None else self.content
        if self.model is not None:
            row["model"] = self.model
        if self.latency_s is not None:
            row["latency_s"] = self.latency_s
        return row

    @classmethod
    def from_wire(cls, row: dict[str, Any]) -> Turn:
        role = ROLE_FROM_WIRE.get(row.get("role", ""))
        if role is None:
            raise ValueError(f"unknown role {row.get('role')!r} (expected assistant/user)")
        return cls(
            role=role,
            content=str(row.get("content", "")),
            input=row.get("input"),
            output=row.get("output"),
            model=row.get("model"),
            latency_s=row.get("latency_s"),
        )


@dataclass
class Episode:
    """A whole collaboration: the task, the dialogue, the final answer and its scores.

    ``reward`` is the paper's scalar reward (backend: fraction of hidden tests passed; frontend:
    CLIP similarity when available, else the design score). ``scores`` holds every metric that
    was computed (``tests_passed``, ``success``, ``clip``, ``design``, ``rating``...).
    """

    task: Task
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None
    reward: float | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    human: str = "simulator"  # "simulator:<model>" or "person:<name>"
    agent_model: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"sample": k, "seed": s} of a rollout

    @property
    def sample_key(self) -> tuple[str, int]:
        """(task id, sample index): what identifies an episode among a run's episodes (rollouts resume
        by it; comparisons pair two agents' episodes by it)."""
        return self.task.id, int(self.meta.get("sample", 0))

    @property
    def agent_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "agent"]

    @property
    def rounds(self) -> int:
        return len(self.agent_turns)

    @property
    def done(self) -> bool:
        return self.answer is not None or self.rounds >= MAX_ROUNDS

    @property
    def success(self) -> bool | None:
        return self.scores.get("success")

    def to_sweet(self) -> dict[str, Any]:
        """sweet_rl trajectory layout: {task, dialogue_history, answer, reward}."""
        row: dict[str, Any] = {
            "task": self.task.to_colbench(),
            "dialogue_history": [t.to_wire() for t in self.turns],
            "answer": self.answer,
        }
        if self.reward is not None:
            row["reward"] = self.reward
        if self.scores:
            row["scores"] = self.scores
        row["human"] = self.human
        if self.agent_model is not None:
            row["agent_model"] = self.agent_model
        if self.meta:
            row["meta"] = self.meta
        return row

    @classmethod
    def from_sweet(cls, row: dict[str, Any], *, kind: TaskKind | None = None, source: str = "") -> Episode:
        from simulators.tasks import task_from_row  # local import: tasks imports domain

        if not isinstance(row, dict):
            raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        task_row = row.get("task")
        if not isinstance(task_row, dict):
            raise ValueError("trajectory has no 'task' object")
        history = row.get("dialogue_history")
        if not isinstance(history, list):
            raise ValueError("trajectory has no 'dialogue_history' list")
        return cls(
            task=task_from_row(task_row, kind=kind, source=source),
            turns=[Turn.from_wire(t) for t in history],
            answer=row.get("answer"),
            reward=row.get("reward"),
            scores=dict(row.get("scores") or {}),
            human=row.get("human", "simulator"),
            agent_model=row.get("agent_model"),
            meta=dict(row.get("meta") or {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_sweet(), ensure_ascii=False)
