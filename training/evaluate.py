"""Evaluate an agent with simulated collaborations: rollouts, metrics, and win rate against another
rollout file on the same tasks. ``--critic DIR`` switches to best-of-N: at every turn the agent
samples N candidates and the critic, which sees c, picks the one to send (paper Fig. 3a: how well
a critic tells good turns from bad ones, measured by the outcomes it leads to).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simulators.domain import MAX_ROUNDS, Episode, Task
from simulators.llm import ChatModel, GenerationConfig, Message, load_model
from simulators.llm.openai_client import DEFAULT_CONCURRENCY, use_concurrency
from simulators.tasks import read_task_file
from simulators.trajectories import load_episodes, write_episodes
from training.stats import matched_pairs

METRICS = ("success", "tests_passed", "clip", "design", "rating")


@dataclass
class EvaluateConfig:
    """``python -m training evaluate``: rollouts of a model, their metrics, and a win rate."""

    model: str = field(default="default", metadata={
        "help": "agent: 'default', a local HF dir, 'openai:URL#MODEL', or registry:VERSION"})
    tasks: str = field(default="", metadata={"help": "ColBench task file (JSONL), or 'samples'"})
    simulator: str = field(default="default", metadata={"help": "simulated human's model"})
    simulator_vision: bool = field(default=False, metadata={
        "help": "frontend: the simulated human sees both screenshots, the agent's page and the reference, as "
                "the paper's Qwen2-VL simulator does (needs a vision endpoint: --simulator openai:URL#MODEL); "
                "otherwise it reads the differences between the two rendered pages as text"})
    out: str = field(default="eval.jsonl", metadata={"help": "rollout file (sweet_rl JSONL); existing episodes are kept"})
    against: str = field(default="", metadata={"help": "another rollout file on the same tasks: report the win rate"})
    limit: int = field(default=0, metadata={"help": "use only the first N tasks (0 = all)"})
    kind: str = field(default="", metadata={"help": "only tasks of this kind: backend or frontend"})
    samples: int = field(default=1, metadata={"help": "episodes per task"})
    critic: str = field(default="", metadata={"help": "trained critic directory: best-of-N mode (each turn picked by the critic)"})
    critic_candidates: int = field(default=16, metadata={"help": "best-of-N: candidates per turn"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    max_rounds: int = field(default=MAX_ROUNDS, metadata={"help": "agent turns per episode"})
    agent_temperature: float = field(default=0.7, metadata={"help": "agent sampling temperature"})
    agent_max_new_tokens: int = field(default=512, metadata={"help": "longest agent turn, in tokens"})
    simulator_max_new_tokens: int = field(default=160, metadata={"help": "longest simulator reply, in tokens"})
    batch_size: int = field(default=8, metadata={"help": "episodes advanced together"})
    concurrency: int = field(default=DEFAULT_CONCURRENCY, metadata={
        "help": "requests in flight at once to an openai: agent or simulator (sized for `vllm serve`); with an "
                "openai: agent, --batch-size is raised to N so that N episodes advance together"})
    scoring: str = field(default="ours", metadata={
        "help": "backend scorer: 'ours' (sandboxed, fair) or 'colbench' (the reference implementation's rules, "
                "for numbers comparable with the paper and HAL; both are kept in each episode's scores)"})


def metrics(episodes: Sequence[Episode]) -> dict:
    """n, mean reward, success rate and the mean of each metric the episodes carry."""
    summary: dict = {"n": len(episodes)}
    rewards = [e.reward for e in episodes if e.reward is not None]
    if rewards:
        summary["reward"] = round(sum(rewards) / len(rewards), 4)
    for key in METRICS:
        values = [float(e.scores[key]) for e in episodes if isinstance(e.scores.get(key), (int, float))]
        if values:
            summary[key if key != "success" else "success_rate"] = round(sum(values) / len(values), 4)
    return summary


def win_rate(episodes: Sequence[Episode], others: Sequence[Episode]) -> dict:
    """How often ``episodes`` beat ``others`` on the same (task, sample): wins + ½ ties, over matches."""
    ours, theirs, _ = matched_pairs(episodes, others)
    wins = sum(a > b for a, b in zip(ours, theirs))
    ties = sum(a == b for a, b in zip(ours, theirs))
    rate = (wins + 0.5 * ties) / len(ours) if ours else float("nan")
    return {"win_rate": round(rate, 4), "wins": wins, "ties": ties, "matched": len(ours)}


class CriticGuidedAgent(ChatModel):
    """An agent whose every turn is the best of N candidates by a critic's A(o_t, a, c).

    The critic needs each conversation's c: conversations are matched to their task by the
    opening problem statement (the first human message, as ``simulators.rollout`` starts them).
    """

    def __init__(self, agent: ChatModel, critic, tasks: Sequence[Task], candidates: int = 16):
        self.agent, self.critic, self.candidates = agent, critic, candidates
        self.name = f"{agent.name}+best-of-{candidates}"
        self.privileged: dict[str, str] = {}
        for task in tasks:
            known = self.privileged.setdefault(task.problem_description, task.privileged_information)
            if known != task.privileged_information:
                raise ValueError("best-of-N needs tasks with distinct problem statements (two tasks share one "
                                 f"but differ in their reference): {task.problem_description[:80]!r}")

    def format_prompt(self, messages: list[Message]) -> str:
        return self.agent.format_prompt(messages)

    def stream_chat(self, messages: list[Message], config: GenerationConfig | None = None,
                    cancel: threading.Event | None = None) -> Iterator[str]:
        yield self.sample([messages], 1, config)[0][0]

    def sample(self, conversations: list[list[Message]], n: int = 1,
               config: GenerationConfig | None = None) -> list[list[str]]:
        config = config or GenerationConfig()
        if config.temperature <= 0:  # greedy candidates would all be the same
            config = GenerationConfig(**{**config.__dict__, "temperature": 1.0})
        all_candidates = self.agent.sample(conversations, n=self.candidates, config=config)
        picked = []
        for conversation, candidates in zip(conversations, all_candidates):
            opening = next(m["content"] for m in conversation if m["role"] == "user")
            scores = self.critic.score_candidates(self.privileged[opening], self.format_prompt(conversation), candidates)
            picked.append([candidates[max(range(len(candidates)), key=scores.__getitem__)]] * n)
        return picked

    def completion_logprobs(self, prompt: str, completion: str) -> list[float]:
        return self.agent.completion_logprobs(prompt, completion)


def _rescore(episodes: Sequence[Episode], scoring: str) -> bool:
    """Score again the backend episodes whose reward another scorer produced; whether there were any."""
    from simulators.scoring import score_episodes

    stale = [e for e in episodes if e.task.kind == "backend" and e.reward is not None
             and e.scores.get("scoring", "ours") != scoring]
    if stale:
        score_episodes(stale, scoring)
    return bool(stale)


def check_simulator_vision(simulator: str, vision: bool) -> None:
    """The vision route sends screenshots as ``image_url`` parts: only an OpenAI-compatible endpoint
    serving a vision model (``vllm serve Qwen2-VL-7B-Instruct``) takes them; a local model is text-only."""
    from simulators.llm import parse_model_spec

    if vision and parse_model_spec(simulator).kind != "openai":
        raise ValueError(f"--simulator-vision sends screenshots, which the simulator {simulator!r} cannot take: "
                         "use a vision endpoint, --simulator openai:URL#MODEL (e.g. vllm serve "
                         "Qwen/Qwen2-VL-7B-Instruct), or leave --simulator-vision off (the text route)")


def run_evaluation(config: EvaluateConfig, tasks: Sequence[Task] | None = None, *, agent: ChatModel | None = None,
                   progress: bool = True) -> dict:
    """Roll out ``config.model`` (or ``agent``) on the tasks and summarise; also writes ``<out>.metrics.json``."""
    from simulators.humans import SimulatedHuman
    from simulators.rollout import RolloutConfig, run_rollouts
    from simulators.scoring import by_scorer_summary, check_scoring

    check_scoring(config.scoring)
    check_simulator_vision(config.simulator, config.simulator_vision)
    if tasks is None:
        if not config.tasks:
            raise ValueError("evaluate: --tasks FILE is required ('samples' for our sample tasks)")
        tasks = read_task_file(config.tasks, config.kind, config.limit)
    agent = agent or load_model(config.model)
    simulator = load_model(config.simulator)
    batch_size = config.batch_size
    use_concurrency(config.concurrency, simulator)
    # Lockstep: a batch bounds what is in flight. (A local agent keeps its own batch size: its memory.)
    if use_concurrency(config.concurrency, agent):
        batch_size = max(batch_size, config.concurrency)
    if config.critic:
        from training.critic import load_critic

        agent = CriticGuidedAgent(agent, load_critic(config.critic), tasks, config.critic_candidates)
    human = SimulatedHuman(simulator, max_new_tokens=config.simulator_max_new_tokens, vision=config.simulator_vision)
    rollout = RolloutConfig(out=config.out, best_of_n=config.samples, seed=config.seed, max_rounds=config.max_rounds,
                            agent_temperature=config.agent_temperature, agent_max_new_tokens=config.agent_max_new_tokens,
                            simulator_max_new_tokens=config.simulator_max_new_tokens,
                            simulator_vision=config.simulator_vision, batch_size=batch_size)
    run_rollouts(tasks, agent, human, rollout, progress=progress)
    task_ids = {t.id for t in tasks}
    stored = load_episodes(config.out).items
    episodes = [e for e in stored if e.task.id in task_ids]
    if _rescore(episodes, config.scoring):  # rollouts score with ours; scores["by_scorer"] keeps both
        write_episodes(stored, config.out)
    result = {"model": config.model, "out": config.out, "scoring": config.scoring, **metrics(episodes)}
    scorers = by_scorer_summary(episodes)
    if scorers:
        result["by_scorer"] = scorers
    if config.critic:
        result["best_of_n"] = {"critic": config.critic, "candidates": config.critic_candidates}
    if config.against:
        others = load_episodes(config.against).items
        _rescore(others, config.scoring)  # in memory: both sides judged by the same scorer
        result["against"] = {"file": config.against, **win_rate(episodes, others)}
    Path(config.out).with_suffix(".metrics.json").write_text(json.dumps(result, indent=2))
    return result
