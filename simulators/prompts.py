"""What a model is prompted with: our prompt files (``assets/prompts/``) and the agent's messages.

The agent sees a system prompt (``assets/prompts/agent_<kind>.txt``) and the dialogue, with its
own turns as ``assistant`` and the human's as ``user``; the same messages are its observation in
training (``training.data``) and the prompt of a preference pair (``simulators.store.preferences``).
"""

from __future__ import annotations

from functools import cache

from simulators.domain import MAX_ROUNDS, Episode
from simulators.llm.base import Message
from simulators.tasks import ASSETS_DIR


@cache
def load_prompt(name: str) -> str:
    return (ASSETS_DIR / "prompts" / f"{name}.txt").read_text(encoding="utf-8").strip()


def agent_messages(episode: Episode, max_rounds: int = MAX_ROUNDS) -> list[Message]:
    """What the agent is conditioned on at its next turn (its observation o_t in the paper); a
    stored Chat-tab conversation (mode ``chat``) had the Chat tab's prompt instead."""
    if episode.meta.get("mode") == "chat":
        system = load_prompt("chat")
    else:
        system = load_prompt(f"agent_{episode.task.kind}").format(max_rounds=max_rounds)
    messages = [{"role": "system", "content": system}]
    messages += [{"role": "assistant" if t.role == "agent" else "user", "content": t.content}
                 for t in episode.turns]
    return messages
