"""The paper's baselines, on the same data interface as SWEET (§5.2):

* **Rejection fine-tuning** (``rft``): supervised fine-tuning on the agent turns of the best
  trajectory of each task (kept when its outcome reaches ``min_reward``), one forward pass per
  trajectory with the loss on the agent's tokens only: each message and the end-of-turn token that
  closes it (``training.data.action_ids``), so the agent learns when to stop.
* **Multi-turn DPO** (``mtdpo``): trajectory pairs, DPO over all agent turns, no critic:
  −log σ(β [log π_θ(τ+)/π_ref(τ+) − log π_θ(τ−)/π_ref(τ−)]) with log π(τ) = Σ_t Σ_l log π(a_t^l | ·).
  That is Eq. 2 with the actor as the model, no c and no length normalisation, so it reuses the
  critic's one-pass trajectory scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simulators.domain import Episode
from simulators.llm.specs import base_spec
from training import sweet
from training.critic import Critic, CriticSettings, pair_group_loss, pair_groups
from training.data import DataOptions, best_trajectories, dialogue_tokens, read_episodes, trajectory_pairs
from training.logprobs import ReferenceLogprobs, TokenScorer, collate, reference_model_id
from training.models import load_lora_model
from training.options import TrainOptions
from training.trainer import finished_summary, make_accelerator, optimise, save_adapter, save_config


@dataclass
class RFTConfig(TrainOptions, DataOptions):
    """``python -m training rft``: rejection fine-tuning on the agent turns of the best trajectories."""

    out: str = field(default="runs/rft", metadata={"help": "output directory"})
    min_reward: float = field(default=1.0, metadata={
        "help": "keep a task's best trajectory only when its outcome (--reward-key) reaches this (1.0 = success)"})


@dataclass
class MTDPOConfig(TrainOptions, DataOptions):
    """``python -m training mtdpo``: multi-turn DPO on trajectory pairs, no critic."""

    out: str = field(default="runs/mtdpo", metadata={"help": "output directory"})
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate for the LoRA parameters"})
    beta: float = field(default=0.1, metadata={"help": "β of the trajectory-level DPO loss"})
    max_group_tokens: int = field(default=8192, metadata={
        "help": "trajectories of one task forwarded together, up to this many tokens (a pair always fits)"})


def train_rft(config: RFTConfig, episodes: Sequence[Episode] | None = None) -> dict:
    out = Path(config.out)
    if (finished := finished_summary(out, config.resume)) is not None:
        return finished
    episodes = list(episodes) if episodes is not None else read_episodes(config.data, config.kind)
    selected = best_trajectories(episodes, config.reward_key, config.min_reward)
    if not selected:
        raise ValueError(f"no trajectory reaches --min-reward {config.min_reward} ({config.reward_key})")
    save_config(config, out / "config.json")
    accelerator = make_accelerator()
    lm, tokenizer = load_lora_model(config.model, config, device=accelerator.device)
    sequences = [dialogue_tokens(episodes[i], tokenizer, privileged=False, max_length=config.max_length)
                 for i in selected]
    device = accelerator.device

    def loss_fn(model, sequence):
        input_ids, attention_mask, target_mask = collate(
            [sequence.input_ids], [[t >= 0 for t in sequence.token_turn]], tokenizer.pad_token_id, device)
        loss = sweet.mean_nll(model(input_ids, attention_mask, target_mask))
        return loss, {}, len(sequence.input_ids)

    result = optimise(TokenScorer(lm), sequences, loss_fn, config, out, accelerator=accelerator, name="rft",
                        plot_keys=("loss",))
    summary = {"out": str(out), "adapter": str(out / "adapter"), "trajectories": len(selected),
               "steps": result.steps, **result.last}
    save_adapter(lm, tokenizer, out, summary, accelerator)
    return summary


def train_mtdpo(config: MTDPOConfig, episodes: Sequence[Episode] | None = None) -> dict:
    out = Path(config.out)
    if (finished := finished_summary(out, config.resume)) is not None:
        return finished
    episodes = list(episodes) if episodes is not None else read_episodes(config.data, config.kind)
    pairs = trajectory_pairs(episodes, config.reward_key, config.pairing, config.min_reward_gap)
    if not pairs:
        raise ValueError("no trajectory pairs in the data: each task needs trajectories with different rewards")
    save_config(config, out / "config.json")
    accelerator = make_accelerator()
    lm, tokenizer = load_lora_model(config.model, config, device=accelerator.device)
    settings = CriticSettings(base=base_spec(config.model), privileged=False, length_normalize=False,
                              beta=config.beta, max_length=config.max_length)
    # π_ref = the actor as loaded (its parent version, or the base), computed before training.
    policy = Critic(TokenScorer(lm), tokenizer, settings, reference_disables_adapter=False)
    policy.reference = ReferenceLogprobs(out / "reference_logprobs.pt", model_id=reference_model_id(
        config.model, lm, adapter_disabled=False))
    sequences = {i: policy.tokens(episodes[i]) for i in sorted({i for p in pairs for i in p})}
    policy.fill_reference(list(sequences.values()), progress=config.progress)
    lengths = {i: len(s.input_ids) for i, s in sequences.items()}
    groups = pair_groups(pairs, [e.task.id for e in episodes], lengths, config.max_group_tokens)

    def loss_fn(model, group):
        return pair_group_loss(policy, model, sequences, group, config.beta)

    result = optimise(policy.model, groups, loss_fn, config, out, accelerator=accelerator, name="mtdpo",
                        plot_keys=("loss", "accuracy", "margin"))
    summary = {"out": str(out), "adapter": str(out / "adapter"), "pairs": len(pairs), "steps": result.steps,
               **result.last}
    save_adapter(lm, tokenizer, out, summary, accelerator)
    return summary
