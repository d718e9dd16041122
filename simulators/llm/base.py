"""One model interface for the app, the simulators and training.

Chat messages in (``[{"role": "system"|"user"|"assistant", "content": str}]``), text out:

* ``stream_chat``  — stream one reply as text deltas (the app's chat);
* ``chat``         — one whole reply with the exact prompt it saw (rollouts log it in ``Turn.input``);
* ``sample``       — batched sampling, ``n`` candidates per conversation (best-of-N, rollouts);
* ``completion_logprobs`` — per-token log-probs of a given completion after a given prompt
  (the SWEET critic and DPO need them);
* ``reuse_prefixes`` — a block in which the backend may keep what it computed for earlier prompts,
  so dialogues that grow by a turn per round are not re-encoded from the start (rollouts use it).

Backends: ``simulators.llm.local`` (transformers, optional LoRA adapter) and
``simulators.llm.openai_client`` (any OpenAI-compatible endpoint such as ``vllm serve``).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Message = dict[str, str]


class ModelError(RuntimeError):
    """A model could not be loaded or did not answer; the message says what to do."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    # A backend may end a sequence as soon as ``stop_when(its text so far)`` is true (the text is
    # kept whole), or ignore it: for callers whose use of the reply no longer depends on more text.
    stop_when: Callable[[str], bool] | None = None


@dataclass
class Completion:
    text: str  # the generated text
    prompt: str  # the exact formatted prompt the model saw
    latency_s: float
    model: str  # the model id/version that produced it


class ChatModel(ABC):
    """Base class of every backend. Subclasses implement the abstract methods."""

    #: id recorded on every turn this model produces (a registry version, a path or a hub id)
    name: str = "model"

    @abstractmethod
    def format_prompt(self, messages: list[Message]) -> str:
        """The exact text the model is conditioned on (chat template applied, generation prompt added)."""

    @abstractmethod
    def stream_chat(
        self, messages: list[Message], config: GenerationConfig | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield text deltas of one reply; stops early when ``cancel`` is set."""

    @abstractmethod
    def sample(
        self, conversations: list[list[Message]], n: int = 1, config: GenerationConfig | None = None
    ) -> list[list[str]]:
        """``n`` completions for each conversation, batched. Returns one list of n texts per conversation."""

    @abstractmethod
    def completion_logprobs(self, prompt: str, completion: str) -> list[float]:
        """Log-prob of each token of ``completion`` given the formatted ``prompt``."""

    @contextmanager
    def reuse_prefixes(self) -> Iterator[None]:
        """While open, generations may reuse the work done on earlier prompts they extend. Outputs
        are the same either way; backends without such a cache (here) do nothing."""
        yield

    def chat(self, messages: list[Message], config: GenerationConfig | None = None) -> Completion:
        start = time.perf_counter()
        text = "".join(self.stream_chat(messages, config))
        return Completion(text=text, prompt=self.format_prompt(messages),
                          latency_s=time.perf_counter() - start, model=self.name)
