"""Batched ColBench rollouts: an agent model and a simulated human play whole episodes.

Episodes of a batch advance in lockstep, so each round is one batched ``sample`` call for the
agent and one for the simulator. Finished episodes are scored and appended to the output JSONL
(sweet_rl layout) at once, so a killed run keeps them and re-running the same command continues
where it stopped: an episode is identified by (task id, sample index).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from simulators.domain import ANSWER_MARKER, MAX_ROUNDS, Episode, Task, Turn
from simulators.humans import SimulatedHuman, agent_messages
from simulators.llm.base import ChatModel, GenerationConfig
from simulators.tasks import append_episode, load_episodes


@dataclass
class RolloutConfig:
    """``python -m simulators rollout``: simulated collaborations written as sweet_rl JSONL."""

    tasks: str = field(default="", metadata={
        "help": "ColBench-format task file (JSONL), or 'samples' for the tasks shipped in assets/tasks"})
    agent: str = field(default="default", metadata={
        "help": "agent model: 'default', a local HF dir or hub id, or 'openai:BASE_URL#MODEL'"})
    simulator: str = field(default="default", metadata={"help": "simulated human's model (same forms)"})
    out: str = field(default="rollouts.jsonl", metadata={
        "help": "output JSONL; episodes already in it are kept and skipped (resume)"})
    limit: int = field(default=0, metadata={"help": "use only the first N tasks (0 = all)"})
    kind: str = field(default="", metadata={"help": "only tasks of this kind: backend or frontend"})
    best_of_n: int = field(default=1, metadata={"help": "independent episodes per task (K samples)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    max_rounds: int = field(default=MAX_ROUNDS, metadata={"help": "agent turns per episode (ColBench: 10)"})
    agent_temperature: float = field(default=0.7, metadata={"help": "agent sampling temperature (0 = greedy)"})
    agent_max_new_tokens: int = field(default=512, metadata={"help": "longest agent turn, in tokens"})
    simulator_max_new_tokens: int = field(default=160, metadata={"help": "longest simulator reply, in tokens"})
    simulator_vision: bool = field(default=False, metadata={
        "help": "frontend: send both screenshots to the simulator (needs a vision endpoint)"})
    batch_size: int = field(default=8, metadata={"help": "episodes advanced together"})
    score: bool = field(default=True, metadata={"help": "score each finished episode"})


def final_answer(episode: Episode) -> str:
    """The agent's answer: backend, the text after the marker in its last turn (or the whole turn
    when it ran out of rounds); frontend, the last HTML page it produced (as in ColBench)."""
    last = episode.agent_turns[-1].content
    if episode.task.kind == "backend":
        return last.split(ANSWER_MARKER, 1)[1].strip() if ANSWER_MARKER in last else last
    from simulators.frontend_eval import extract_html

    for turn in reversed(episode.agent_turns):
        html = extract_html(turn.content)
        if html:
            return html
    return ""


def new_episode(task: Task, *, human: str, agent_model: str, meta: dict | None = None) -> Episode:
    """An episode opens with the human stating the (vague) task, as in ColBench."""
    return Episode(task=task, turns=[Turn(role="human", content=task.problem_description)],
                   human=human, agent_model=agent_model, meta=dict(meta or {}))


def play(episodes: Sequence[Episode], agent: ChatModel, human: SimulatedHuman,
         config: RolloutConfig) -> None:
    """Advance every episode to its end, in lockstep; fills turns and ``answer`` in place."""
    agent_config = GenerationConfig(max_new_tokens=config.agent_max_new_tokens,
                                    temperature=config.agent_temperature, seed=config.seed)
    for round_index in range(config.max_rounds):
        active = [e for e in episodes if e.answer is None]
        if not active:
            return
        conversations = [agent_messages(e, config.max_rounds) for e in active]
        agent_config.seed = config.seed + round_index  # fresh randomness each round, reproducible
        start = time.perf_counter()
        outputs = agent.sample(conversations, n=1, config=agent_config)
        latency = (time.perf_counter() - start) / len(active)
        for episode, conversation, texts in zip(active, conversations, outputs):
            text = texts[0]
            episode.turns.append(Turn(role="agent", content=text, input=agent.format_prompt(conversation),
                                      output=text, model=agent.name, latency_s=round(latency, 3)))
            if ANSWER_MARKER in text or episode.rounds >= config.max_rounds:
                episode.answer = final_answer(episode)
        waiting = [e for e in active if e.answer is None]
        start = time.perf_counter()
        replies = human.replies(waiting)
        latency = (time.perf_counter() - start) / max(len(waiting), 1)
        for episode, reply in zip(waiting, replies):
            episode.turns.append(Turn(role="human", content=reply, model=human.model.name,
                                      latency_s=round(latency, 3)))


def pending_work(tasks: Iterable[Task], best_of_n: int, done: set[tuple[str, int]]) -> list[tuple[Task, int]]:
    """(task, sample index) pairs not yet in the output, sample-major like sweet_rl's k blocks."""
    tasks = list(tasks)
    return [(task, k) for k in range(best_of_n) for task in tasks if (task.id, k) not in done]


def run_rollouts(tasks: Sequence[Task], agent: ChatModel, human: SimulatedHuman, config: RolloutConfig,
                 progress: bool = True) -> list[Episode]:
    """Play and score every missing (task, sample) episode, appending each batch to ``config.out``."""
    out = Path(config.out)
    done: set[tuple[str, int]] = set()
    if out.exists():
        done = {(e.task.id, int(e.meta.get("sample", 0))) for e in load_episodes(out).items}
    work = pending_work(tasks, config.best_of_n, done)
    finished: list[Episode] = []
    with tqdm(total=len(work), desc="episodes", unit="ep", disable=not progress) as bar:
        for start in range(0, len(work), config.batch_size):
            batch = [new_episode(task, human=human.name, agent_model=agent.name,
                                 meta={"sample": k, "seed": config.seed})
                     for task, k in work[start:start + config.batch_size]]
            play(batch, agent, human, config)
            if config.score:
                from simulators.scoring import score_episodes

                score_episodes(batch)
            for episode in batch:
                append_episode(episode, out)
            finished.extend(batch)
            bar.update(len(batch))
    return finished
