"""Batched ColBench rollouts: an agent model and a simulated human play whole episodes.

Episodes of a batch advance in lockstep, so each round is one batched ``sample`` call for the
agent and one for the simulator, inside the models' ``reuse_prefixes`` block: a local model
encodes only each dialogue's new turns, not the whole prompt again. Finished episodes are scored
and appended to the output JSONL (sweet_rl layout) at once, so a killed run keeps them and
re-running the same command continues where it stopped: an episode is identified by (task id,
sample index).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from simulators.domain import ANSWER_MARKER, MAX_ROUNDS, Episode, Task, Turn
from simulators.humans import SimulatedHuman
from simulators.llm.base import ChatModel, GenerationConfig
from simulators.prompts import agent_messages
from simulators.trajectories import append_episode, load_episodes


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
    threads: int = field(default=0, metadata={
        "help": "torch CPU threads for local models (0 = one per core left idle by other work when the run starts)"})


def final_answer(episode: Episode) -> str:
    """The agent's answer: backend, the text after the marker in its last turn (or the whole turn
    when it ran out of rounds); frontend, the last HTML page it produced (as in ColBench)."""
    last = episode.agent_turns[-1].content
    if episode.task.kind == "backend":
        return last.split(ANSWER_MARKER, 1)[1].strip() if ANSWER_MARKER in last else last
    from simulators.scoring.answers import extract_html

    for turn in reversed(episode.agent_turns):
        html = extract_html(turn.content)
        if html:
            return html
    return ""


def new_episode(task: Task, *, human: str, agent_model: str, meta: dict | None = None) -> Episode:
    """An episode opens with the human stating the (vague) task, as in ColBench."""
    return Episode(task=task, turns=[Turn(role="human", content=task.problem_description)],
                   human=human, agent_model=agent_model, meta=dict(meta or {}))


def play(episodes: Sequence[Episode], agent: ChatModel, human: SimulatedHuman, config: RolloutConfig,
         on_round: Callable[[Sequence[Episode]], None] | None = None) -> None:
    """Advance every episode to its end, in lockstep; fills turns and ``answer`` in place.
    ``on_round(episodes)`` is called after each round (progress)."""
    with agent.reuse_prefixes(), human.model.reuse_prefixes():  # the same model twice is fine
        _play_rounds(episodes, agent, human, config, on_round or (lambda episodes: None))


def _play_rounds(episodes: Sequence[Episode], agent: ChatModel, human: SimulatedHuman, config: RolloutConfig,
                 on_round: Callable[[Sequence[Episode]], None]) -> None:
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
        on_round(episodes)


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
        done = {e.sample_key for e in load_episodes(out).items}
    work = pending_work(tasks, config.best_of_n, done)
    finished: list[Episode] = []
    with torch_threads(config.threads, agent, human.model), EpisodeProgress(len(work), config.max_rounds,
                                                                           disable=not progress) as bar:
        for start in range(0, len(work), config.batch_size):
            batch = [new_episode(task, human=human.name, agent_model=agent.name,
                                 meta={"sample": k, "seed": config.seed})
                     for task, k in work[start:start + config.batch_size]]
            try:
                play(batch, agent, human, config, on_round=bar.advance)
            except Exception:
                # A model failing for good mid-batch (an endpoint down past its retries) must not
                # take the episodes that had already ended with it: they are kept, and a re-run resumes.
                finished.extend(_keep_episodes([e for e in batch if e.answer is not None], out, config.score))
                raise
            finished.extend(_keep_episodes(batch, out, config.score))
    return finished


def _keep_episodes(episodes: list[Episode], out: Path, score: bool) -> list[Episode]:
    """Score (if ``score``) and append ``episodes`` to the output JSONL."""
    if score and episodes:
        from simulators.scoring import score_episodes

        score_episodes(episodes)
    for episode in episodes:
        append_episode(episode, out)
    return episodes


class EpisodeProgress:
    """A progress bar over episodes: each played round moves an episode 1/max_rounds of the way
    (so the ETA is sensible long before the first batch ends); an episode that ends counts as one."""

    def __init__(self, total: int, max_rounds: int, disable: bool = False):
        self.max_rounds = max_rounds
        self.credited: dict[int, float] = {}  # id(episode) -> share of it on the bar
        self.bar = tqdm(total=total, desc="rollouts", unit="ep", disable=disable,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")
        self.bar.set_description_str(f"rollouts (0/{total} episodes done)", refresh=False)

    def advance(self, episodes: Sequence[Episode]) -> None:
        for episode in episodes:
            share = 1.0 if episode.answer is not None else min(episode.rounds / self.max_rounds, 1.0)
            self.bar.update(share - self.credited.get(id(episode), 0.0))
            self.credited[id(episode)] = share
        self.bar.set_description_str(f"rollouts ({self.done}/{self.bar.total} episodes done)")

    @property
    def done(self) -> int:
        return sum(share == 1.0 for share in self.credited.values())

    @property
    def progress(self) -> float:
        """Episodes' worth of rounds played (what the bar shows)."""
        return sum(self.credited.values())

    def __enter__(self) -> EpisodeProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


@contextmanager
def torch_threads(threads: int, *models: ChatModel):
    """Run local models on ``threads`` torch CPU threads (0: one per idle core), restored afterwards."""
    local = sys.modules.get("simulators.llm.local")  # imported whenever a local model exists
    if local is None or not any(isinstance(m, local.LocalModel) and m.device.type == "cpu" for m in models):
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads if threads > 0 else local.idle_cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(previous)
