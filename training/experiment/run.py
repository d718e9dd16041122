"""The experiment's stages, run in order (split, base rollouts, training, evaluation, the critic
studies), each recorded in the working directory so that a re-run continues where the last stopped."""

from __future__ import annotations

import gc
import hashlib
import json
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from simulators.domain import Episode, Task
from simulators.scoring import score_episodes
from simulators.tasks import load_tasks, read_task_file, sample_task_files, split_paths, write_tasks
from simulators.trajectories import load_episodes, write_episodes
from training.evaluate import EvaluateConfig, run_evaluation
from training.experiment.config import (
    ABLATIONS,
    KINDS,
    ExperimentConfig,
    check_config,
    names,
    other_scorers,
    same_settings,
)
from training.experiment.results import write_results
from training.experiment.workdir import Stages, actor_dir, critic_dir, eval_file

COLBENCH_DIR = Path(__file__).resolve().parents[3] / "shared" / "colbench"  # ../shared/colbench from the repo


# -- 1. split ----------------------------------------------------------------------------------------


def default_tasks() -> str:
    """The ColBench dev tasks when ../shared/colbench holds them, else our sample tasks."""
    files = [COLBENCH_DIR / f"{kind}_dev.jsonl" for kind in KINDS]
    return ",".join(str(f) for f in files) if all(f.is_file() for f in files) else "samples"


def source_files(paths: str) -> list[dict]:
    """Each file behind a task-file list (``samples`` = our sample files) with its SHA-256."""
    files = []
    for path in split_paths(paths):
        for file in (sample_task_files() if path == "samples" else [Path(path)]):
            load_tasks(file)  # a missing or unreadable file fails here, with its name
            files.append({"path": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()})
    return files


def shuffled_ids(tasks: Sequence[Task], kind: str, seed: int) -> list[str]:
    ids = list(dict.fromkeys(t.id for t in tasks if t.kind == kind))  # unique, in file order
    random.Random(seed).shuffle(ids)
    return ids


def make_split(config: ExperimentConfig, out: Path) -> dict:
    """Shuffle each kind's tasks with ``split_seed``: the first ``held_out`` are held out, the next
    ``train_tasks`` train (with ``--held-out-tasks``, those come from that file and training tasks
    from ``--tasks``, minus any held-out one)."""
    source = config.tasks or default_tasks()
    out.mkdir(parents=True, exist_ok=True)
    tasks = read_task_file(source)
    pool = read_task_file(config.held_out_tasks) if config.held_out_tasks else tasks
    by_id = {t.id: t for t in [*tasks, *pool]}
    sides: dict[str, dict[str, list[str]]] = {}
    for kind in names(config.kinds, KINDS, "kind"):
        order = shuffled_ids(tasks, kind, config.split_seed)
        held = shuffled_ids(pool, kind, config.split_seed)[: config.held_out]
        rest = [i for i in order if i not in set(held)]
        train = rest[: config.train_tasks] if config.train_tasks else rest
        wanted = config.train_tasks or 1
        if len(held) < config.held_out or len(train) < wanted:
            where = f"{source} has {len(order)}" + (
                f", {config.held_out_tasks} {len({t.id for t in pool if t.kind == kind})}" if config.held_out_tasks else "")
            raise ValueError(f"{kind}: the split needs {config.held_out} held-out and {wanted} training task(s); "
                             f"{where} {kind} task(s): lower --held-out / --train-tasks or give more tasks")
        sides[kind] = {"train": train, "held_out": held}
    write_tasks([by_id[i] for side in sides.values() for i in side["train"]], out / "tasks_train.jsonl")
    write_tasks([by_id[i] for side in sides.values() for i in side["held_out"]], out / "tasks_held_out.jsonl")
    split = {"seed": config.split_seed, "source": source_files(source),
             "held_out_source": source_files(config.held_out_tasks) if config.held_out_tasks else None,
             "kinds": sides}
    (out / "split.json").write_text(json.dumps(split, indent=2))
    return {kind: {side: len(ids) for side, ids in s.items()} for kind, s in sides.items()}


def split_tasks(out: Path) -> tuple[list[Task], list[Task]]:
    """(training tasks, held-out tasks) as the split stage recorded them."""
    return read_task_file(str(out / "tasks_train.jsonl")), read_task_file(str(out / "tasks_held_out.jsonl"))


# -- 2. rollouts and 4. evaluation ---------------------------------------------------------------------


def evaluate_config(config: ExperimentConfig, out_file: Path, model: str, samples: int, **extra) -> EvaluateConfig:
    """The rollout settings every agent is played with: same simulator, seed, rounds and lengths."""
    return EvaluateConfig(model=model, simulator=config.simulator, simulator_vision=config.simulator_vision,
                          out=str(out_file), samples=samples, seed=config.seed, max_rounds=config.max_rounds,
                          agent_temperature=config.temperature, agent_max_new_tokens=config.max_new_tokens,
                          simulator_max_new_tokens=config.simulator_max_new_tokens, batch_size=config.batch_size,
                          scoring=config.scoring, **extra)


def base_agent(config: ExperimentConfig):
    from simulators.llm import load_model

    return load_model(config.agent or config.model)


def base_rollouts(config: ExperimentConfig, out: Path, tasks: Sequence[Task]) -> dict:
    spec = config.agent or config.model
    summary = run_evaluation(evaluate_config(config, out / "rollouts.jsonl", spec, config.samples), tasks,
                             agent=base_agent(config), progress=config.progress)
    return {k: v for k, v in summary.items() if k != "out"}


def trained_agent(config: ExperimentConfig, out: Path, method: str):
    """The agent ``method`` trained: --model with its adapter, or the adapter served at --adapter-endpoint."""
    if config.adapter_endpoint:
        from simulators.llm import load_model

        return load_model(f"openai:{config.adapter_endpoint}#{method}")
    from simulators.llm.local import LocalModel
    from simulators.llm.specs import weights_source

    # A model of its own (not load_model's shared one): released after its evaluation.
    return LocalModel(weights_source(config.model)[0], adapter=str(actor_dir(out, method) / "adapter"),
                      name=f"experiment:{method}")


def evaluation_tasks(config: ExperimentConfig, held_out: Sequence[Task], method: str) -> list[Task]:
    """Every held-out task for zero-shot and the main methods; the critic studies' subset otherwise."""
    if method in ("zero_shot", "sweet", "mtdpo", "rft"):
        return list(held_out)
    tasks = []
    for kind in names(config.study_kinds, KINDS, "kind"):
        of_kind = [t for t in held_out if t.kind == kind]
        tasks += of_kind[: config.study_held_out] if config.study_held_out else of_kind
    return tasks


def evaluate_method(config: ExperimentConfig, out: Path, method: str, held_out: Sequence[Task],
                    trained: dict | None) -> dict:
    """Roll out one agent on its held-out tasks, then re-score the same episodes with the other scorer."""
    if trained is not None and "not_trained" in trained:
        return {"not_evaluated": f"not trained: {trained['not_trained']}"}
    tasks = evaluation_tasks(config, held_out, method)
    path = eval_file(out, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    if method == "zero_shot":
        agent, extra = base_agent(config), {}
    elif method == "best_of_n":
        agent, extra = base_agent(config), dict(critic=str(critic_dir(out, "sweet")),
                                                critic_candidates=config.critic_best_of_n)
    else:
        agent, extra = trained_agent(config, out, method), {}
    summary = run_evaluation(evaluate_config(config, path, agent.name, config.eval_samples, **extra), tasks,
                             agent=agent, progress=config.progress)
    del agent
    gc.collect()
    ids = {t.id for t in tasks}
    for scorer in other_scorers(config):
        # Backend only: frontend scoring is the same under every scorer.
        episodes = [copy_episode(e) for e in load_episodes(path).items if e.task.id in ids and e.task.kind == "backend"]
        score_episodes(episodes, scorer)
        write_episodes(episodes, eval_file(out, method, scorer))
    return {k: v for k, v in summary.items() if k != "out"}


def copy_episode(episode: Episode) -> Episode:
    return Episode.from_sweet(episode.to_sweet())


# -- 3. training -----------------------------------------------------------------------------------------


def training_options(config: ExperimentConfig, out: Path) -> dict:
    """What every trainer shares: the rollouts, their pairing, LoRA, lengths, seed."""
    return dict(data=str(out / "rollouts.jsonl"), reward_key=config.reward_key, pairing=config.pairing,
                min_reward_gap=config.min_reward_gap, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                gradient_accumulation_steps=config.gradient_accumulation_steps, max_length=config.max_length,
                seed=config.seed, resume=True, progress=config.progress)


def not_trained(train: Callable[[], dict]) -> dict:
    """``train()``'s summary, or why there was nothing to train on (the trainers raise ValueError for
    data without pairs or without a trajectory good enough: a finding of the run, kept in the results)."""
    try:
        return train()
    except ValueError as error:
        return {"not_trained": str(error)}


def train_critic_stage(config: ExperimentConfig, out: Path, method: str, episodes: Sequence[Episode]) -> dict:
    from training.critic import CriticConfig, train_critic

    critic = CriticConfig(**training_options(config, out), model=config.model, out=str(critic_dir(out, method)),
                          epochs=config.critic_epochs, learning_rate=config.critic_learning_rate,
                          beta=config.critic_beta, human_pairs=False, **ABLATIONS.get(method, {}))
    return not_trained(lambda: train_critic(critic, episodes))


def train_actor_stage(config: ExperimentConfig, out: Path, method: str, episodes: Sequence[Episode],
                      critic: dict) -> dict:
    from training.actor import ActorConfig, train_actor

    if "not_trained" in critic:
        return {"not_trained": f"no critic: {critic['not_trained']}"}
    target = actor_dir(out, method)
    sampled = actor_dir(out, "sweet") / "sampled.jsonl"
    if method != "sweet" and sampled.is_file() and not (target / "sampled.jsonl").is_file():
        # The same actor, trajectories and seed sample the same candidates: the ablations rank
        # SWEET's own samples, so only their critic differs (and the sampling is not paid again).
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sampled, target / "sampled.jsonl")
    actor = ActorConfig(**training_options(config, out), model=config.model, out=str(target),
                        critic=str(critic_dir(out, method)), epochs=config.actor_epochs,
                        learning_rate=config.actor_learning_rate, beta=config.actor_beta, nll_coef=config.nll_coef,
                        data_fraction=config.data_fraction, best_of_n=config.best_of_n,
                        pairs_per_turn=config.pairs_per_turn, max_new_tokens=config.max_new_tokens,
                        human_pairs=False)
    return not_trained(lambda: train_actor(actor, episodes))


def train_baseline_stage(config: ExperimentConfig, out: Path, method: str, episodes: Sequence[Episode]) -> dict:
    from training.baselines import MTDPOConfig, RFTConfig, train_mtdpo, train_rft

    common = dict(**training_options(config, out), model=config.model, out=str(actor_dir(out, method)),
                  epochs=config.actor_epochs, learning_rate=config.actor_learning_rate)
    if method == "rft":
        return not_trained(lambda: train_rft(RFTConfig(**common, min_reward=config.rft_min_reward), episodes))
    return not_trained(lambda: train_mtdpo(MTDPOConfig(**common, beta=config.actor_beta), episodes))


# -- the run -------------------------------------------------------------------------------------------------


def run_experiment(config: ExperimentConfig) -> dict:
    check_config(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    same_settings(config, out)
    stages = Stages(out / "stages")
    stages.run("split", lambda: make_split(config, out))
    train_tasks, held_out = split_tasks(out)
    stages.run("rollouts", lambda: base_rollouts(config, out, train_tasks))
    train_ids = {t.id for t in train_tasks}
    episodes = [e for e in load_episodes(out / "rollouts.jsonl").items if e.task.id in train_ids]

    trained: dict[str, dict] = {}
    critics: dict[str, dict] = {}

    def train(method: str) -> None:
        if method in ("mtdpo", "rft"):
            trained[method] = stages.run(f"train_{method}", lambda: train_baseline_stage(config, out, method, episodes))
            return
        critics[method] = stages.run(f"train_{method}_critic",
                                     lambda: train_critic_stage(config, out, method, episodes))
        trained[method] = stages.run(f"train_{method}_actor",
                                     lambda: train_actor_stage(config, out, method, episodes, critics[method]))

    def evaluate(method: str, needs: dict | None) -> None:
        stages.run(f"eval_{method}", lambda: evaluate_method(config, out, method, held_out, needs))
        write_results(config, out, stages)

    # The main comparison first, so that a run stopped early already answers it.
    for method in ("sweet", "mtdpo", "rft"):
        train(method)
    evaluate("zero_shot", None)
    for method in ("sweet", "mtdpo", "rft"):
        evaluate(method, trained[method])
    for method in names(config.ablations, list(ABLATIONS), "ablation"):
        train(method)
        evaluate(method, trained[method])
    if config.critic_best_of_n:
        evaluate("best_of_n", critics["sweet"])
    results = write_results(config, out, stages)
    return {"out": str(out), "results": str(out / "results.md"), "verdicts": results["verdicts"]}


