"""Scripted trajectories with exact prompts, for tests and benchmarks.

``scripted_episode`` plays a dialogue whose agent and human messages are given, recording on each
agent turn the prompt a chat model would have seen (the agent's system prompt and the dialogue,
rendered with ``tokenizer``'s chat template) — the same ``Turn.input`` a rollout records.
"""

from __future__ import annotations

from collections.abc import Sequence

from simulators.domain import Episode, Task, Turn
from simulators.prompts import agent_messages


def scripted_episode(
    task: Task, agent_texts: Sequence[str], human_texts: Sequence[str], tokenizer, *,
    reward: float | None = None, scores: dict | None = None, sample: int = 0, system_prompt: str | None = None,
) -> Episode:
    """Human opens with the problem; then agent, human, agent, ... (``len(human_texts)`` must be
    ``len(agent_texts) - 1``: the agent's last message ends the episode). ``system_prompt``
    replaces the agent's usual one (``assets/prompts``), e.g. to fit a tiny test model's context."""
    if len(human_texts) != len(agent_texts) - 1:
        raise ValueError("a scripted episode needs one human reply between consecutive agent messages")
    episode = Episode(task=task, turns=[Turn(role="human", content=task.problem_description)],
                      human="simulator:scripted", agent_model="scripted", meta={"sample": sample})
    for i, text in enumerate(agent_texts):
        messages = agent_messages(episode)
        if system_prompt is not None:
            messages[0] = {"role": "system", "content": system_prompt}
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        episode.turns.append(Turn(role="agent", content=text, input=prompt, output=text, model="scripted"))
        if i < len(human_texts):
            episode.turns.append(Turn(role="human", content=human_texts[i]))
    episode.answer = agent_texts[-1]
    episode.reward = reward
    episode.scores = dict(scores or {})
    return episode
