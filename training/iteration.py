"""One full training iteration: critic → sampling → ranking → actor → evaluation → registry.

    python -m training loop --data runs/rollouts.jsonl --out runs/iter1
    python -m training loop --db ~/.collab-rl/collab.sqlite --out runs/iter2 --promote-if-better

``--algorithm sweet`` (default) is SWEET-RL; ``mtdpo`` and ``rft`` train the baselines on the same
data in place of the critic and actor stages. The actor starts from ``--parent`` (a registry
version; by default the registry's current one, or the base model when none is set). The parent
and the new actor are rolled out on the same tasks with the same simulator and seed; the new
version is registered with both results and the gate's decision: the paired difference in reward
(same task, same sample) with its bootstrap 95% CI, and a verdict, "promote" (the CI's lower bound
is above ``--promote-margin``), "underpowered" (it straddles the margin: too few episodes to tell)
or "no gain". With ``--promote-if-better``, a "promote" verdict marks the version ``promoted`` and
makes it the registry's current version (the app serves it to new sessions). Each stage writes into ``--out``
(``critic/``, ``actor/``, ``eval_parent.jsonl``, ``eval_new.jsonl``, ``version.json``) and a re-run
continues from the first stage not yet finished.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from simulators.domain import MAX_ROUNDS
from simulators.llm import load_model
from simulators.llm.registry import ModelRegistry
from simulators.llm.specs import base_spec
from simulators.tasks import read_task_file
from simulators.trajectories import load_episodes
from training import ALGORITHMS
from training.actor import ActorConfig, train_actor
from training.baselines import MTDPOConfig, RFTConfig, train_mtdpo, train_rft
from training.critic import CriticConfig, train_critic
from training.data import DataOptions, data_snapshot, read_episodes
from training.evaluate import EvaluateConfig, check_simulator_vision, run_evaluation, win_rate
from training.stats import MIN_TASKS, compare_episodes, gate


@dataclass
class IterationConfig(DataOptions):
    """``python -m training loop``: one training iteration producing a new actor version in the registry."""

    out: str = field(default="runs/loop", metadata={"help": "working directory of this iteration"})
    algorithm: str = field(default="sweet", metadata={
        "help": "sweet (critic + actor) | mtdpo (multi-turn DPO baseline) | rft (rejection fine-tuning baseline)"})
    base: str = field(default="default", metadata={"help": "base model when the registry has no parent version"})
    parent: str = field(default="", metadata={
        "help": "registry version the actor starts from (empty = the current version, or the base when none)"})
    promote_if_better: bool = field(default=False, metadata={
        "help": "when the gate's verdict is 'promote' (the 95%% CI of the paired reward gain over the parent lies "
                f"above --promote-margin, over at least {MIN_TASKS} tasks): mark the new version 'promoted' in its metadata "
                "and make it the registry's current version"})
    promote_margin: float = field(default=0.0, metadata={
        "help": "the CI's lower bound of the paired mean-reward gain must exceed this to promote"})
    # critic
    critic_epochs: int = field(default=4, metadata={"help": "critic: passes over the pairs"})
    critic_learning_rate: float = field(default=1e-4, metadata={"help": "critic: AdamW learning rate"})
    critic_beta: float = field(default=0.1, metadata={"help": "critic: β of Eq. 2"})
    # actor
    actor_epochs: int = field(default=1, metadata={"help": "actor: passes over the pairs"})
    actor_learning_rate: float = field(default=5e-5, metadata={"help": "actor: AdamW learning rate"})
    actor_beta: float = field(default=0.1, metadata={"help": "actor: β′ of Eq. 4"})
    nll_coef: float = field(default=0.01, metadata={"help": "actor: weight of the NLL term on chosen actions"})
    data_fraction: float = field(default=0.1, metadata={"help": "actor: fraction of trajectories resampled"})
    best_of_n: int = field(default=16, metadata={"help": "actor: candidates per turn"})
    pairs_per_turn: int = field(default=4, metadata={"help": "actor: pairs drawn per turn"})
    max_new_tokens: int = field(default=512, metadata={"help": "actor: longest candidate, in tokens"})
    human_pairs: bool = field(default=True, metadata={
        "help": "actor: add people's turn-level preference pairs (session databases in --data, --preferences)"})
    critic_human_pairs: bool = field(default=False, metadata={
        "help": "critic: also learn from people's turn-level preference pairs"})
    # both
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (critic and actor)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (critic and actor)"})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "micro-batches per optimiser step"})
    max_length: int = field(default=4096, metadata={"help": "longest training sequence, in tokens"})
    # evaluation
    eval_tasks: str = field(default="", metadata={
        "help": "task file of the evaluation gate (empty = our sample tasks); tasks in the training data are "
                "left out (held out), unless nothing else is left"})
    eval_limit: int = field(default=12, metadata={
        "help": f"evaluate on the first N tasks (0 = all); the gate promotes on {MIN_TASKS} tasks at least (sizing: "
                "docs/TRAINING.md, 'The evaluation gate')"})
    eval_samples: int = field(default=2, metadata={
        "help": "episodes per task and model (sample k of the parent and of the new version share the seed)"})
    simulator: str = field(default="default", metadata={"help": "simulated human for the evaluation"})
    simulator_vision: bool = field(default=False, metadata={
        "help": "frontend evaluation: the simulated human sees both screenshots (needs a vision endpoint, "
                "--simulator openai:URL#MODEL; see evaluate --simulator-vision)"})
    eval_max_rounds: int = field(default=MAX_ROUNDS, metadata={"help": "agent turns per evaluation episode"})
    eval_max_new_tokens: int = field(default=512, metadata={"help": "longest agent turn in evaluation"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    resume: bool = field(default=True, metadata={"help": "reuse the stages already finished in --out"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def run_iteration(config: IterationConfig) -> dict:
    if config.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {config.algorithm!r}: use one of {', '.join(ALGORITHMS)}")
    check_simulator_vision(config.simulator, config.simulator_vision)  # before hours of training, not after
    out = Path(config.out)
    registry = ModelRegistry()  # $COLLAB_HOME/models/registry, where registry:VERSION specs resolve
    if config.resume and (out / "version.json").is_file():
        return {**json.loads((out / "version.json").read_text()), "reused": True}
    out.mkdir(parents=True, exist_ok=True)
    parent = config.parent or (current.id if (current := registry.current()) else "")
    actor_spec = f"registry:{parent}" if parent else config.base
    base = registry.get(parent).base if parent else base_spec(config.base)  # an unknown parent fails here
    episodes = read_episodes(config.data, config.kind)

    stages = train_stages(config, episodes, base, actor_spec, out)
    evaluation = evaluate_against_parent(config, out, episodes, base, actor_spec, Path(stages["actor"]["adapter"]))
    promoted = config.promote_if_better and evaluation["gate"]["promote"]
    version = registry.register(
        stages["actor"]["adapter"], base=base, parent=parent or None, algorithm=config.algorithm,
        data=data_snapshot(config.data, episodes), config=asdict(config), metrics={"evaluation": evaluation, **stages},
        promoted=promoted, extra={"work_dir": str(out.resolve())})
    if promoted:
        registry.set_current(version.id, reason="promote")
    result = {"version": version.id, "parent": parent or None, "base": base, "algorithm": config.algorithm,
              "promoted": promoted, "reward_gain": evaluation["gate"]["difference"]["mean"], "evaluation": evaluation}
    (out / "version.json").write_text(json.dumps(result, indent=2))
    return result


def train_stages(config: IterationConfig, episodes, base: str, actor_spec: str, out: Path) -> dict:
    """The training part of the iteration; returns each stage's summary (``actor`` has the adapter)."""
    shared = dict(data=config.data, kind=config.kind, reward_key=config.reward_key, pairing=config.pairing,
                  min_reward_gap=config.min_reward_gap, preferences=config.preferences, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                  gradient_accumulation_steps=config.gradient_accumulation_steps, max_length=config.max_length,
                  seed=config.seed, resume=config.resume, progress=config.progress)
    actor_out = str(out / "actor")
    if config.algorithm == "rft":
        return {"actor": train_rft(RFTConfig(**shared, model=actor_spec, out=actor_out, epochs=config.actor_epochs,
                                             learning_rate=config.actor_learning_rate), episodes)}
    if config.algorithm == "mtdpo":
        return {"actor": train_mtdpo(MTDPOConfig(**shared, model=actor_spec, out=actor_out, epochs=config.actor_epochs,
                                                 learning_rate=config.actor_learning_rate, beta=config.actor_beta),
                                     episodes)}
    critic_config = CriticConfig(**shared, model=base, out=str(out / "critic"), epochs=config.critic_epochs,
                                 learning_rate=config.critic_learning_rate, beta=config.critic_beta,
                                 human_pairs=config.critic_human_pairs)
    critic_summary = train_critic(critic_config, episodes)
    actor_config = ActorConfig(**shared, model=actor_spec, out=actor_out, critic=str(out / "critic"),
                               epochs=config.actor_epochs, learning_rate=config.actor_learning_rate,
                               beta=config.actor_beta, nll_coef=config.nll_coef, data_fraction=config.data_fraction,
                               best_of_n=config.best_of_n, pairs_per_turn=config.pairs_per_turn,
                               max_new_tokens=config.max_new_tokens, human_pairs=config.human_pairs)
    return {"critic": critic_summary, "actor": train_actor(actor_config, episodes)}


def evaluation_tasks(config: IterationConfig, episodes) -> tuple[list, bool]:
    """The tasks of the evaluation gate and whether they are held out from the training data.

    Candidates: ``--eval-tasks`` (else our sample tasks) of the kinds trained on, minus every task
    the training data contains. When none is left, the training tasks themselves are used, and the
    result says so (``held_out: false``).
    """
    trained = {e.task.id for e in episodes}
    kinds = {config.kind} if config.kind else {e.task.kind for e in episodes}
    candidates = [t for t in read_task_file(config.eval_tasks or "samples") if t.kind in kinds]
    tasks = [t for t in candidates if t.id not in trained]
    held_out = bool(tasks)
    if not held_out:
        tasks = list({e.task.id: e.task for e in episodes}.values())  # first appearance order
    return (tasks[: config.eval_limit] if config.eval_limit else tasks), held_out


def evaluate_against_parent(config: IterationConfig, out: Path, episodes, base: str, parent_spec: str,
                            adapter: Path) -> dict:
    """Roll out the new actor and its parent on the same held-out tasks, samples, simulator and seed; gate.

    Sample k of a task gets the same seed on both sides, so the episodes pair up by (task id,
    sample) and the gate compares each pair (``training.stats``): its verdict is in ``gate``.
    """
    tasks, held_out = evaluation_tasks(config, episodes)
    common = dict(simulator=config.simulator, simulator_vision=config.simulator_vision, samples=config.eval_samples,
                  seed=config.seed, max_rounds=config.eval_max_rounds, agent_max_new_tokens=config.eval_max_new_tokens)
    parent_eval = EvaluateConfig(model=parent_spec, out=str(out / "eval_parent.jsonl"), **common)
    new_eval = EvaluateConfig(model=f"{base}+{adapter}", out=str(out / "eval_new.jsonl"), **common)
    old = run_evaluation(parent_eval, tasks, agent=load_model(parent_spec), progress=config.progress)
    new = run_evaluation(new_eval, tasks, agent=load_model(base, adapter=str(adapter)), progress=config.progress)
    ids = {t.id for t in tasks}
    new_episodes = [e for e in load_episodes(new_eval.out).items if e.task.id in ids]
    parent_episodes = [e for e in load_episodes(parent_eval.out).items if e.task.id in ids]
    decision = gate(compare_episodes(new_episodes, parent_episodes, "reward", seed=config.seed), config.promote_margin)
    return {"tasks": len(tasks), "held_out": held_out, "new": {k: v for k, v in new.items() if k not in ("model", "out")},
            "parent": {k: v for k, v in old.items() if k not in ("model", "out")},
            **win_rate(new_episodes, parent_episodes), "gate": {"metric": "reward", **decision.as_dict()}}
