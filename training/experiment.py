"""``python -m training experiment``: the paper's comparison end to end, on one fixed split.

    python -m training experiment --preset cpu-small --out runs/experiment
    python -m training experiment --preset paper --out runs/paper --model meta-llama/Llama-3.1-8B-Instruct \\
        --agent openai:http://gpu-a:8000/v1#meta-llama/Llama-3.1-8B-Instruct \\
        --simulator openai:http://gpu-b:8000/v1#meta-llama/Llama-3.1-70B-Instruct

Stages, in order (each writes into ``--out`` and, when finished, a marker ``stages/<name>.json``
with its wall time and summary; a re-run skips the finished stages, and the one that was running
when a run was killed continues from what it left: rollouts per episode, training from its
checkpoint):

1. ``split`` -- a fixed split of ``--tasks`` into training and held-out tasks per kind
   (``split.json``: the ids of each side, the seed, every source file with its SHA-256; the tasks
   themselves in ``tasks_train.jsonl`` and ``tasks_held_out.jsonl``);
2. ``rollouts`` -- the base agent and the simulator, K episodes per training task (``rollouts.jsonl``);
3. ``train_*`` -- from those same rollouts: SWEET-RL (critic, then actor), multi-turn DPO, RFT
   (``train/<method>/``);
4. ``eval_*`` -- zero-shot and every trained actor on the *same* held-out tasks, with the same
   seed, samples and simulator (``eval/<method>.jsonl``; the other scorer's verdicts on the same
   episodes in ``eval/<method>.<scorer>.jsonl``);
5. the critic studies: the ablations of the paper's Table 3 (critic without privileged
   information, with a value head, without length normalisation; each trains its own critic and
   an actor ranked by it) and critic best-of-N (paper Fig. 3a: the base agent with every turn
   picked by SWEET's critic -- a measure of the critic, reported apart, never as an agent's score).

After each evaluation, ``results.json``, ``results.md`` and ``results.png`` are written again from
what is finished: per task kind and scorer, each method's n, means, win rate against zero-shot and
the paired difference from zero-shot with its bootstrap 95% CI (``training.stats``: pairs by
(task, sample), tasks resampled), and the wall time of every stage.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from simulators.domain import Episode, Task
from simulators.scoring import SCORERS, check_scoring, score_episodes
from simulators.tasks import (
    load_episodes,
    load_tasks,
    read_task_file,
    sample_task_files,
    split_paths,
    write_episodes,
    write_tasks,
)
from training.data import PAIRING_RULES, REWARD_KEYS
from training.evaluate import EvaluateConfig, check_simulator_vision, metrics, run_evaluation, win_rate
from training.stats import compare_episodes, gate

KINDS = ("backend", "frontend")
COLBENCH_DIR = Path(__file__).resolve().parents[2] / "shared" / "colbench"  # ../shared/colbench from the repo
# The paper's Table 3 critic ablations, as CriticConfig settings.
ABLATIONS = {
    "no_privileged": {"privileged": False},
    "value_head": {"head": "value"},
    "no_length_normalize": {"length_normalize": False},
}
LABELS = {
    "zero_shot": "zero-shot",
    "sweet": "SWEET-RL",
    "mtdpo": "multi-turn DPO",
    "rft": "RFT",
    "no_privileged": "SWEET, critic without c",
    "value_head": "SWEET, value-head critic",
    "no_length_normalize": "SWEET, no length normalisation",
    "best_of_n": "critic best-of-N",
}
# What each kind's table reports (keys of Episode.scores); the means come from training.evaluate.metrics.
KIND_METRICS = {"backend": ("success", "tests_passed"), "frontend": ("clip", "design")}
MEAN_KEYS = {"success": "success_rate"}
# A re-run must use the settings the directory was started with, except these (they change no result).
FREE_FIELDS = ("progress",)


@dataclass
class ExperimentConfig:
    """``python -m training experiment``: zero-shot vs SWEET-RL vs multi-turn DPO vs RFT (+ critic ablations
    and critic best-of-N) on one fixed split, resumable; results with paired bootstrap 95% CIs.

    The defaults are the ``cpu-small`` preset: the default model (SmolLM2-135M-Instruct) as agent,
    simulator and trained model, sized to finish in about 2 hours on 2 CPU cores. Size: per kind
    (backend and frontend) 8 training tasks x K=3 rollouts (48 trajectories in all) and 16
    held-out tasks x 1 episode; 3 rounds of at most 192 agent tokens and 48 simulator tokens;
    critic 2 epochs; the actor resamples 10% of the trajectories with 4 candidates per turn.
    Rollouts dominate: zero-shot, SWEET-RL, multi-turn DPO and RFT play all 32 held-out tasks
    (128 episodes), the critic studies (3 ablation actors, best-of-4) the first 8 held-out backend
    tasks only (32 episodes), ~220 episodes with the base rollouts, measured at ~24 CPU-seconds each
    (docs/RESULTS.md). Wall time is recorded per stage in ``results.md``.
    ``--preset paper`` switches every default to the paper's settings (see PaperExperimentConfig);
    any flag given overrides its preset value.
    """

    preset: str = field(default="cpu-small", metadata={
        "help": "cpu-small | paper: the preset every other option defaults to (an option given overrides it)"})
    out: str = field(default="runs/experiment", metadata={
        "help": "working directory; a re-run with the same settings continues where the last one stopped"})
    # -- tasks and split
    tasks: str = field(default="", metadata={
        "help": "task files, comma-separated, or 'samples' (empty = the ColBench dev tasks "
                "../shared/colbench/{backend,frontend}_dev.jsonl when present, else our samples)"})
    held_out_tasks: str = field(default="", metadata={
        "help": "a separate task file for the held-out side, e.g. ColBench's test.jsonl (empty = split --tasks)"})
    kinds: str = field(default="backend,frontend", metadata={"help": "task kinds, comma-separated"})
    train_tasks: int = field(default=8, metadata={"help": "training tasks per kind (0 = all not held out)"})
    held_out: int = field(default=16, metadata={"help": "held-out evaluation tasks per kind"})
    split_seed: int = field(default=0, metadata={"help": "seed of the task shuffle that makes the split"})
    # -- models
    model: str = field(default="default", metadata={
        "help": "base model that is trained (a local HF directory or hub id, or 'default'); its LoRA adapters "
                "are the trained agents"})
    agent: str = field(default="", metadata={
        "help": "how the base model is served for the base rollouts and zero-shot, e.g. "
                "openai:http://host:8000/v1#MODEL (empty = load --model here)"})
    adapter_endpoint: str = field(default="", metadata={
        "help": "OpenAI-compatible base URL of a server holding every trained adapter under its method name "
                "(vllm serve MODEL --enable-lora --lora-modules sweet=OUT/train/sweet/actor/adapter ...); empty = "
                "each trained agent is --model + its adapter, loaded here"})
    simulator: str = field(default="default", metadata={"help": "simulated human, the same for every stage"})
    simulator_vision: bool = field(default=False, metadata={
        "help": "frontend: the simulator sees both screenshots (needs a vision endpoint, --simulator openai:URL#MODEL)"})
    # -- episodes
    samples: int = field(default=3, metadata={"help": "K: base rollouts per training task"})
    eval_samples: int = field(default=1, metadata={"help": "episodes per held-out task and agent"})
    max_rounds: int = field(default=3, metadata={"help": "agent turns per episode (ColBench: 10)"})
    temperature: float = field(default=0.7, metadata={"help": "agent sampling temperature, rollouts and evaluation"})
    max_new_tokens: int = field(default=192, metadata={"help": "longest agent turn, in tokens (and actor candidates)"})
    simulator_max_new_tokens: int = field(default=48, metadata={"help": "longest simulator reply, in tokens"})
    batch_size: int = field(default=8, metadata={"help": "episodes advanced together"})
    scoring: str = field(default="ours", metadata={
        "help": "backend scorer of the rollouts (the training signal) and the first results table: ours | colbench; "
                "the held-out episodes are also re-scored with the other, reported beside it"})
    # -- training data
    reward_key: str = field(default="reward", metadata={"help": "what orders trajectories (see critic --help)"})
    pairing: str = field(default="threshold", metadata={
        "help": "trajectory pairs: auto | success | threshold. The paper pairs backend by success (auto); "
                "cpu-small uses threshold, since a 135M model rarely succeeds and success pairing leaves no pairs"})
    min_reward_gap: float = field(default=0.1, metadata={"help": "threshold pairing: least reward difference"})
    rft_min_reward: float = field(default=0.5, metadata={
        "help": "RFT keeps a task's best trajectory when its reward reaches this (the paper: 1.0, success)"})
    # -- SWEET critic and actor
    critic_epochs: int = field(default=2, metadata={"help": "critic: passes over the pairs (reference: 4)"})
    critic_learning_rate: float = field(default=1e-4, metadata={"help": "critic: AdamW learning rate (LoRA)"})
    critic_beta: float = field(default=0.1, metadata={"help": "critic: β of Eq. 2"})
    actor_epochs: int = field(default=1, metadata={"help": "actor, mtDPO, RFT: passes over their data"})
    actor_learning_rate: float = field(default=5e-5, metadata={"help": "actor, mtDPO, RFT: AdamW learning rate (LoRA)"})
    actor_beta: float = field(default=0.1, metadata={"help": "actor: β′ of Eq. 4; mtDPO: its β"})
    nll_coef: float = field(default=0.01, metadata={"help": "actor: weight of the NLL term on chosen actions"})
    data_fraction: float = field(default=0.1, metadata={
        "help": "actor: fraction of the trajectories whose turns are resampled (reference: 0.1)"})
    best_of_n: int = field(default=4, metadata={"help": "actor: candidates per turn (reference: 16)"})
    pairs_per_turn: int = field(default=2, metadata={"help": "actor: pairs drawn per turn (reference: 4)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (every trained model)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (every trained model)"})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "micro-batches per optimiser step"})
    max_length: int = field(default=4096, metadata={"help": "longest training sequence, in tokens"})
    # -- critic studies
    ablations: str = field(default="no_privileged,value_head,no_length_normalize", metadata={
        "help": "Table 3 critic ablations, comma-separated (empty = none): " + ", ".join(ABLATIONS)})
    critic_best_of_n: int = field(default=4, metadata={
        "help": "critic best-of-N (Fig. 3a): candidates per turn, SWEET's critic picks (0 = skip)"})
    study_kinds: str = field(default="backend", metadata={
        "help": "kinds the critic studies (ablation actors, best-of-N) are evaluated on"})
    study_held_out: int = field(default=8, metadata={
        "help": "critic studies: the first N held-out tasks of each of --study-kinds (0 = all)"})
    # -- reporting
    bootstrap_resamples: int = field(default=10_000, metadata={"help": "bootstrap resamples of each CI"})
    seed: int = field(default=0, metadata={"help": "seed of every stage: the same for every evaluated agent"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def _preset(name: str, value):
    """ExperimentConfig's field ``name`` with another default and the same help (for a preset)."""
    return field(default=value, metadata=ExperimentConfig.__dataclass_fields__[name].metadata)


@dataclass
class PaperExperimentConfig(ExperimentConfig):
    """``python -m training experiment --preset paper``: the paper's settings, for a GPU cluster.

    10 rounds, 1024-token turns, temperature 1.0, critic 4 epochs, N=16 candidates per turn for the
    actor (10% of the trajectories, 4 pairs each) and for critic best-of-N, success pairing for
    backend, RFT on successes, every ablation on both kinds, held-out 200 tasks per kind and the rest of the
    600+600 dev tasks for training (the paper trains on ColBench's 10k+ training tasks and tests on
    1000 backend / 500 frontend tasks: pass ``--tasks TRAIN.jsonl --held-out-tasks TEST.jsonl``
    for that). Serve the agent and the simulator with ``vllm serve`` and pass them as ``--agent`` /
    ``--simulator openai:URL#MODEL`` (the paper: Llama-3.1-8B-Instruct as agent, Llama-3.1-70B-Instruct
    as backend simulator, Qwen2-VL-72B-Instruct with ``--simulator-vision`` for frontend); ``--model``
    is the same base model's weights for training, under ``accelerate launch`` on the GPUs.
    """

    preset: str = _preset("preset", "paper")
    out: str = _preset("out", "runs/experiment-paper")
    train_tasks: int = _preset("train_tasks", 0)
    held_out: int = _preset("held_out", 200)
    samples: int = _preset("samples", 3)
    max_rounds: int = _preset("max_rounds", 10)
    temperature: float = _preset("temperature", 1.0)
    max_new_tokens: int = _preset("max_new_tokens", 1024)
    simulator_max_new_tokens: int = _preset("simulator_max_new_tokens", 400)
    batch_size: int = _preset("batch_size", 64)
    pairing: str = _preset("pairing", "auto")
    rft_min_reward: float = _preset("rft_min_reward", 1.0)
    critic_epochs: int = _preset("critic_epochs", 4)
    best_of_n: int = _preset("best_of_n", 16)
    pairs_per_turn: int = _preset("pairs_per_turn", 4)
    max_length: int = _preset("max_length", 16384)
    critic_best_of_n: int = _preset("critic_best_of_n", 16)
    study_kinds: str = _preset("study_kinds", "backend,frontend")
    study_held_out: int = _preset("study_held_out", 0)


PRESETS: dict[str, type[ExperimentConfig]] = {"cpu-small": ExperimentConfig, "paper": PaperExperimentConfig}


# -- settings ----------------------------------------------------------------------------------------


def names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """A comma-separated list of names, each checked against ``allowed`` (a clear error otherwise)."""
    chosen = split_paths(text)
    for name in chosen:
        if name not in allowed:
            raise ValueError(f"unknown {what} {name!r}: use {', '.join(allowed)}")
    return chosen


def check_config(config: ExperimentConfig) -> None:
    """Every setting that would otherwise fail hours into the run."""
    if config.preset not in PRESETS:
        raise ValueError(f"unknown preset {config.preset!r}: use {', '.join(PRESETS)}")
    if not names(config.kinds, KINDS, "kind"):
        raise ValueError("--kinds names no task kind")
    outside = set(names(config.study_kinds, KINDS, "kind")) - set(names(config.kinds, KINDS, "kind"))
    if outside:
        raise ValueError(f"--study-kinds {config.study_kinds!r} names kinds that --kinds leaves out: {sorted(outside)}")
    if (names(config.ablations, list(ABLATIONS), "ablation") or config.critic_best_of_n) and not split_paths(
            config.study_kinds):
        raise ValueError("the critic studies (--ablations, --critic-best-of-n) need --study-kinds")
    if config.reward_key not in REWARD_KEYS or config.pairing not in PAIRING_RULES:
        raise ValueError(f"--reward-key must be one of {', '.join(REWARD_KEYS)} and --pairing one of "
                         f"{', '.join(PAIRING_RULES)}")
    check_scoring(config.scoring)
    check_simulator_vision(config.simulator, config.simulator_vision)
    for name in ("held_out", "samples", "eval_samples", "max_rounds", "max_new_tokens", "batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


def same_settings(config: ExperimentConfig, out: Path) -> None:
    """Record the settings on the first run; refuse a re-run whose settings differ (mixed results)."""
    path = out / "config.json"
    current = asdict(config)
    if not path.is_file():
        path.write_text(json.dumps(current, indent=2))
        return
    recorded = json.loads(path.read_text())
    changed = [f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in current.items()
               if k not in FREE_FIELDS and recorded.get(k) != v]
    if changed:
        raise ValueError(f"{out} was started with other settings ({'; '.join(changed)}): re-run with the same "
                         "options to continue it, or use a new --out")


def command_line(config: ExperimentConfig) -> str:
    """The command that reproduces ``config``: its preset and every option that differs from it."""
    preset = PRESETS[config.preset]()
    words = ["python -m training experiment", f"--preset {config.preset}", f"--out {shlex.quote(config.out)}"]
    for f in fields(config):
        value, default = getattr(config, f.name), getattr(preset, f.name)
        if f.name in ("preset", "out") or value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        words.append(flag if value is True else f"--no-{flag[2:]}" if value is False else
                     f"{flag} {shlex.quote(str(value))}")
    return " ".join(words)


# -- stages ------------------------------------------------------------------------------------------


class Stages:
    """The finished stages of an experiment: ``stages/<name>.json`` = {stage, wall_s, summary}."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.order: list[str] = []  # stages in the order this run reached them
        directory.mkdir(parents=True, exist_ok=True)

    def marker(self, name: str) -> dict | None:
        path = self.directory / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run(self, name: str, work: Callable[[], dict]) -> dict:
        """``work()``'s summary, from the marker when the stage is finished, else by running it."""
        self.order.append(name)
        if (done := self.marker(name)) is not None:
            return done["summary"]
        start = time.perf_counter()
        summary = work()
        record = {"stage": name, "wall_s": round(time.perf_counter() - start, 1), "summary": summary}
        tmp = self.directory / f".{name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, self.directory / f"{name}.json")  # a marker is never half-written
        return summary

    def finished(self) -> list[dict]:
        """The markers of the stages reached so far, in stage order."""
        return [record for name in self.order if (record := self.marker(name)) is not None]


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
    from training.models import model_source

    # A model of its own (not load_model's shared one): released after its evaluation.
    return LocalModel(model_source(config.model)[0], adapter=str(actor_dir(out, method) / "adapter"),
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


def other_scorers(config: ExperimentConfig) -> list[str]:
    return [s for s in SCORERS if s != config.scoring]


def eval_file(out: Path, method: str, scorer: str | None = None) -> Path:
    return out / "eval" / (f"{method}.jsonl" if scorer is None else f"{method}.{scorer}.jsonl")


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


def critic_dir(out: Path, method: str) -> Path:
    return out / "train" / method / "critic"


def actor_dir(out: Path, method: str) -> Path:
    return out / "train" / method / "actor"


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


# -- 5. results ----------------------------------------------------------------------------------------------


def method_order(config: ExperimentConfig) -> list[str]:
    return ["zero_shot", "sweet", "mtdpo", "rft", *names(config.ablations, list(ABLATIONS), "ablation")]


def compare_rows(config: ExperimentConfig, kind: str, methods: dict[str, list[Episode]]) -> dict:
    """Per method: n, means, win rate and paired difference from zero-shot (same task and sample)."""
    zero = methods["zero_shot"]
    present = [m for m in KIND_METRICS[kind] if any(isinstance(e.scores.get(m), (int, float)) for e in zero)]
    rows = {}
    for method, episodes in methods.items():
        summary = metrics(episodes)
        row: dict = {"label": LABELS[method], "n": summary["n"],
                     "mean": {m: summary.get(MEAN_KEYS.get(m, m)) for m in present}}
        if method != "zero_shot":
            row["baseline_mean"] = {m: metrics(matched(zero, episodes)).get(MEAN_KEYS.get(m, m)) for m in present}
            row["win_rate"] = win_rate(episodes, zero)
            row["difference"] = {}
            for m in present:
                try:
                    difference = compare_episodes(episodes, zero, m, resamples=config.bootstrap_resamples,
                                                  seed=config.seed)
                except ValueError:  # no (task, sample) scored on both sides
                    continue
                row["difference"][m] = {**difference.as_dict(), "verdict": gate(difference).verdict}
        rows[method] = row
    return {"metrics": present, "methods": rows}


def matched(episodes: Sequence[Episode], others: Sequence[Episode]) -> list[Episode]:
    """The episodes of ``episodes`` whose (task, sample) ``others`` also played."""
    keys = {e.sample_key for e in others}
    return [e for e in episodes if e.sample_key in keys]


def read_evaluations(out: Path, methods: Sequence[str], scorer: str | None, stages: Stages) -> dict[str, list[Episode]]:
    """The held-out episodes of every evaluated method (of ``scorer``'s re-scoring when given)."""
    found = {}
    for method in methods:
        marker = stages.marker(f"eval_{method}")
        path = eval_file(out, method, scorer)
        if marker is not None and "not_evaluated" not in marker["summary"] and path.is_file():
            found[method] = load_episodes(path).items
    return found


def build_results(config: ExperimentConfig, out: Path, stages: Stages) -> dict:
    split = json.loads((out / "split.json").read_text())
    kinds = names(config.kinds, KINDS, "kind")
    scorers: dict[str, dict] = {}
    best_of_n: dict[str, dict] = {}
    for scorer in [config.scoring, *other_scorers(config)]:
        primary = scorer == config.scoring
        evaluated = read_evaluations(out, [*method_order(config), "best_of_n"], None if primary else scorer, stages)
        if "zero_shot" not in evaluated:
            continue
        tables = {}
        for kind in kinds if primary else ["backend"]:
            of_kind = {m: [e for e in eps if e.task.kind == kind] for m, eps in evaluated.items()}
            if not of_kind["zero_shot"]:
                continue
            agents = {m: of_kind[m] for m in method_order(config) if of_kind.get(m)}
            tables[kind] = compare_rows(config, kind, agents)
            if of_kind.get("best_of_n"):
                study = compare_rows(config, kind, {"zero_shot": matched(of_kind["zero_shot"], of_kind["best_of_n"]),
                                                    "best_of_n": of_kind["best_of_n"]})
                best_of_n.setdefault(scorer, {})[kind] = study
        scorers[scorer] = tables
    training, not_evaluated = {}, {}
    for record in stages.finished():
        if record["stage"].startswith("train_"):
            training[record["stage"].removeprefix("train_")] = record["summary"]
        if record["stage"].startswith("eval_") and "not_evaluated" in record["summary"]:
            not_evaluated[LABELS[record["stage"].removeprefix("eval_")]] = record["summary"]["not_evaluated"]
    verdicts = {scorer: {kind: verdict_line(table) for kind, table in tables.items()}
                for scorer, tables in scorers.items()}
    zero_shot = load_episodes(eval_file(out, "zero_shot")).items if eval_file(out, "zero_shot").is_file() else []
    clip_missing = next((e.scores["clip_unavailable"] for e in zero_shot if "clip_unavailable" in e.scores), None)
    return {
        "preset": config.preset, "command": command_line(config), "config": asdict(config),
        "split": {"seed": split["seed"], "source": split["source"], "held_out_source": split["held_out_source"],
                  "tasks": {kind: {side: len(ids) for side, ids in s.items()} for kind, s in split["kinds"].items()}},
        "base_rollouts": {kind: metrics([e for e in load_episodes(out / "rollouts.jsonl").items if e.task.kind == kind])
                          for kind in kinds} if (out / "rollouts.jsonl").is_file() else {},
        "scorers": scorers, "best_of_n": best_of_n, "training": training, "verdicts": verdicts,
        "not_evaluated": not_evaluated,
        "clip_unavailable": clip_missing,
        "stages": {r["stage"]: r["wall_s"] for r in stages.finished()},
        "total_wall_s": round(sum(r["wall_s"] for r in stages.finished()), 1),
    }


def verdict_line(table: dict) -> str:
    """Which methods beat zero-shot beyond the 95% CI (training.stats.gate's "promote"), or that none did."""
    if len(table["methods"]) == 1:
        return "Only zero-shot was evaluated: no trained method to compare (see Training)."
    better, worse = [], []
    for row in table["methods"].values():
        for metric, d in row.get("difference", {}).items():
            if d["verdict"] == "promote":
                better.append(f"{row['label']} ({metric} {d['mean']:+.3f}, CI [{d['low']:.3f}, {d['high']:.3f}])")
            elif d["high"] < 0:
                worse.append(f"{row['label']} ({metric} {d['mean']:+.3f}, CI [{d['low']:.3f}, {d['high']:.3f}])")
    line = ("Beats zero-shot beyond its 95% CI: " + "; ".join(better)) if better else \
        "No method beats zero-shot beyond its 95% CI."
    return line + (" Worse than zero-shot beyond its CI: " + "; ".join(worse) + "." if worse else "")


def write_results(config: ExperimentConfig, out: Path, stages: Stages) -> dict:
    from training.plots import plot_paired_differences

    results = build_results(config, out, stages)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(results_markdown(results))
    panels = []
    for kind, table in results["scorers"].get(config.scoring, {}).items():
        for metric in table["metrics"]:
            rows = [(row["label"], row["difference"][metric]) for row in table["methods"].values()
                    if metric in row.get("difference", {})]
            panels.append((f"{kind}: {metric}", [(label, d["mean"], d["low"], d["high"]) for label, d in rows]))
    plot_paired_differences(panels, out / "results.png",
                            title=f"difference from zero-shot, 95% CI ({config.preset}, scoring {config.scoring})")
    return results


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _number(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def results_markdown(results: dict) -> str:
    config = results["config"]
    lines = [f"# Experiment results: preset `{results['preset']}`", "", f"    {results['command']}", "",
             f"Base agent `{config['agent'] or config['model']}`, trained model `{config['model']}`, simulator "
             f"`{config['simulator']}`"
             f"{' (vision)' if config['simulator_vision'] else ''}; {config['max_rounds']} rounds, agent turns of at "
             f"most {config['max_new_tokens']} tokens, temperature {config['temperature']}, seed {config['seed']} for "
             "every agent. Split (seed "
             f"{results['split']['seed']}): " + "; ".join(
                 f"{kind} {s['train']} training tasks x {config['samples']} rollouts, {s['held_out']} held-out x "
                 f"{config['eval_samples']}" for kind, s in results["split"]["tasks"].items()) + ".", ""]
    if results["not_evaluated"]:
        lines += ["Not evaluated, for want of training data (see Training):", ""]
        lines += [f"* {label}: {reason}" for label, reason in results["not_evaluated"].items()] + [""]
    if results["clip_unavailable"]:
        lines += [f"CLIP was not computed (frontend rewards are the design score): {results['clip_unavailable']}", ""]
    for scorer, tables in results["scorers"].items():
        for kind, table in tables.items():
            lines += [f"## {kind.capitalize()} (scorer: {scorer})", "", results["verdicts"][scorer][kind], ""]
            lines += comparison_table(table)
    for scorer, tables in results["best_of_n"].items():
        for kind, table in tables.items():
            lines += [f"## Critic best-of-{config['critic_best_of_n']}, {kind} (scorer: {scorer}; paper Fig. 3a)", "",
                      "The base agent with every turn picked by SWEET's critic out of "
                      f"{config['critic_best_of_n']} candidates: a measure of the critic, not an agent's score. "
                      + verdict_line(table), ""]
            lines += comparison_table(table)
    lines += ["## Base rollouts (training data)", "", "| kind | n | " + " | ".join(KIND_METRICS["backend"] +
                                                                               KIND_METRICS["frontend"]) + " |",
              "|---|---|" + "---|" * 4]
    for kind, summary in results["base_rollouts"].items():
        cells = [_number(summary.get(MEAN_KEYS.get(m, m))) for m in KIND_METRICS["backend"] + KIND_METRICS["frontend"]]
        lines.append(f"| {kind} | {summary['n']} | " + " | ".join(cells) + " |")
    lines += ["", "## Training", "", "| stage | result |", "|---|---|"]
    for stage, summary in results["training"].items():
        lines.append(f"| {stage} | {training_cell(summary)} |")
    lines += ["", "## Wall time per stage", "", "| stage | wall time |", "|---|---|"]
    lines += [f"| {stage} | {duration(seconds)} |" for stage, seconds in results["stages"].items()]
    lines += [f"| total | {duration(results['total_wall_s'])} |", ""]
    return "\n".join(lines)


def comparison_table(table: dict) -> list[str]:
    """One row per method: n, each metric's mean and its paired difference from zero-shot [95% CI] (bold:
    beyond the CI, ``training.stats.gate``), and the win rate over zero-shot (matched episodes)."""
    header = "| method | n |" + "".join(f" {m} | Δ {m} [95% CI] |" for m in table["metrics"]) + " win rate (pairs) |"
    lines = [header, "|---" * (3 + 2 * len(table["metrics"])) + "|"]
    everyone = table["methods"]["zero_shot"]["n"]
    for row in table["methods"].values():
        cells = [row["label"], str(row["n"])]
        for metric in table["metrics"]:
            mean = _number(row["mean"].get(metric))
            if row["n"] < everyone:  # played a subset: zero-shot's mean on the same episodes, for reading the Δ
                mean += f" (zero-shot {_number(row['baseline_mean'].get(metric))})"
            cells.append(mean)
            d = row.get("difference", {}).get(metric)
            cells.append("–" if d is None else
                         f"{'**' if d['verdict'] == 'promote' else ''}{d['mean']:+.3f} [{d['low']:+.3f}, "
                         f"{d['high']:+.3f}]{'**' if d['verdict'] == 'promote' else ''}")
        win = row.get("win_rate")
        cells.append("–" if win is None else f"{win['win_rate']:.3f} ({win['matched']})")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def training_cell(summary: dict) -> str:
    if "not_trained" in summary:
        return f"not trained: {summary['not_trained']}"
    keys = ("pairs", "train_pairs", "eval_pairs", "trajectories", "prompts", "steps", "train_accuracy",
            "eval_accuracy", "loss")
    return ", ".join(f"{k} {summary[k]:.3g}" if isinstance(summary[k], float) else f"{k} {summary[k]}"
                     for k in keys if k in summary)
