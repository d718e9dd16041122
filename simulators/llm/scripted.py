"""A model that replies from a script: fixed texts, in order, streamed word by word.

For demos and end-to-end tests of the app and the rollout loop where what the agent says must be
known in advance (a tiny random model cannot write a correct function). ``scripted:FILE`` loads
a JSON list of replies; after the last one it starts again from the first.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from simulators.llm.base import ChatModel, GenerationConfig, Message, ModelError


class ScriptedModel(ChatModel):
    def __init__(self, replies: list[str], name: str = "scripted"):
        if not replies or not all(isinstance(r, str) for r in replies):
            raise ModelError("a scripted model needs a non-empty list of reply strings")
        self.replies = list(replies)
        self.name = name
        self._next = itertools.cycle(self.replies)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str) -> ScriptedModel:
        try:
            replies = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read the script {path}: {exc}") from exc
        return cls(replies, name=f"scripted:{Path(path).stem}")

    def _take(self) -> str:
        with self._lock:
            return next(self._next)

    def format_prompt(self, messages: list[Message]) -> str:
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
            "<|im_start|>assistant\n"

    def stream_chat(self, messages: list[Message], config: GenerationConfig | None = None,
                    cancel: threading.Event | None = None) -> Iterator[str]:
        for piece in re.findall(r"\S+\s*|\s+", self._take()):
            if cancel is not None and cancel.is_set():
                return
            yield piece

    def sample(self, conversations: list[list[Message]], n: int = 1,
               config: GenerationConfig | None = None) -> list[list[str]]:
        return [[self._take() for _ in range(n)] for _ in conversations]

    def completion_logprobs(self, prompt: str, completion: str) -> list[float]:
        raise ModelError("a scripted model has no token probabilities")
