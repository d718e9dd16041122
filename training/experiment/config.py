"""What an experiment is: its settings (``ExperimentConfig`` and the ``paper`` preset), the methods
it compares, the checks run before any work, and the command line that reproduces a run."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from simulators.scoring import SCORERS, check_scoring
from simulators.tasks import split_paths
from training.data import PAIRING_RULES, REWARD_KEYS
from training.evaluate import check_simulator_vision

KINDS = ("backend", "frontend")
# The paper's Table 3 critic ablations, as CriticConfig settings.
ABLATIONS = {
    "no_privileged": {"privileged": False},
    "value_head": {"head": "value"},
    "no_length_normalize": {"length_normalize": False},
}
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


def other_scorers(config: ExperimentConfig) -> list[str]:
    return [s for s in SCORERS if s != config.scoring]

