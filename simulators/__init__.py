"""The ColBench world: tasks, episodes, scoring, sandboxed evaluation and simulated humans."""

from simulators.domain import ANSWER_MARKER, MAX_ROUNDS, Episode, Task, Turn

__all__ = ["ANSWER_MARKER", "MAX_ROUNDS", "Episode", "Task", "Turn"]
