"""The SWEET critic (paper §4.2): a turn-wise advantage A_θ(o_t, a_t, c) learned from trajectory
preferences with training-time information c.

One forward pass per trajectory: the critic reads one sequence, ``c`` then the whole dialogue,
and the log-probs of every agent turn's tokens come out of that single pass (the language-model
head runs only at those positions). π_ref is the same base model with the LoRA adapter
disabled — no second copy in memory — and its log-probs are computed once per trajectory, before
training, and cached. The trajectories of a task that appear in several pairs (the best one is
paired with every worse one) are forwarded once per step and share their scores.

People's turn-level preferences from the app (``--human-pairs``) join as pairs of one-turn
trajectories: c, o_t, then the chosen or the rejected action.

Ablations: ``--no-privileged`` (no c), ``--no-length-normalize`` (Σ_l instead of the mean), and
``--head value`` (a regression head on mean-pooled hidden states, trained on the outcome).
"""

from __future__ import annotations

import copy
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from simulators.domain import Episode
from simulators.llm.local import load_tokenizer
from simulators.llm.specs import base_spec, weights_source
from training import sweet
from training.data import (
    DataOptions,
    DialogueTokens,
    action_tokens,
    dialogue_tokens,
    episodes_by_task,
    human_preference_pairs,
    outcome,
    read_episodes,
    trajectory_pairs,
)
from training.logprobs import (
    ReferenceLogprobs,
    TokenScorer,
    collate,
    reference_model_id,
    shared_prefix_logprobs,
)
from training.models import load_lora_model, unwrap
from training.options import TrainOptions
from training.trainer import make_accelerator, optimise, save_config

CRITIC_FILE = "critic.json"
HEADS = ("advantage", "value")


@dataclass
class CriticConfig(TrainOptions, DataOptions):
    """``python -m training critic``: train the step-level critic on trajectory pairs (Eq. 2–3)."""

    out: str = field(default="runs/critic", metadata={"help": "output directory"})
    learning_rate: float = field(default=1e-4, metadata={
        "help": "AdamW learning rate for the LoRA parameters (the reference trains all weights of an 8B model at 2e-7)"})
    epochs: int = field(default=4, metadata={"help": "passes over the pairs (reference: 4)"})
    beta: float = field(default=0.1, metadata={"help": "β of the Bradley–Terry loss, Eq. 2 (reference: 0.1)"})
    privileged: bool = field(default=True, metadata={
        "help": "show the critic c, the task's reference solution (--no-privileged: ablation)"})
    length_normalize: bool = field(default=True, metadata={
        "help": "A = mean log-ratio over the turn's tokens, Eq. 3 (--no-length-normalize: sum, ablation)"})
    head: str = field(default="advantage", metadata={
        "help": "advantage (SWEET) | value (ablation: regression head on mean-pooled hidden states, MSE to the outcome)"})
    max_group_tokens: int = field(default=8192, metadata={
        "help": "trajectories of one task are forwarded together (each once, shared by its pairs) up to this "
                "many tokens per micro-batch; a single pair always goes in one"})
    max_privileged_tokens: int = field(default=2048, metadata={
        "help": "c is cut to this many tokens (and to half of --max-length). 2048 keeps every ColBench reference "
                "whole with the default tokenizer: frontend pages p95 806, max 1711 tokens (1024 cut 1%%); backend "
                "functions max 547"})
    eval_fraction: float = field(default=0.1, metadata={
        "help": "fraction of tasks held out to measure pairwise accuracy (0 = none)"})
    human_pairs: bool = field(default=False, metadata={
        "help": "also learn from people's turn-level preference pairs (app edits, liked regenerations, votes; "
                "--preferences): Eq. 2 over one-turn trajectories, -log σ(β (A(o_t, a+, c) - A(o_t, a-, c)))"})


@dataclass
class CriticSettings:
    """What a saved critic needs to score again (``critic.json``)."""

    base: str
    head: str = "advantage"
    privileged: bool = True
    length_normalize: bool = True
    beta: float = 0.1
    max_length: int = 4096
    max_privileged_tokens: int = 2048


class ValueModel(nn.Module):
    """The value-head ablation: V(c, o_t, a_t) = w · mean-pool(h) + b over the tokens up to a_t's end.

    The head is affine, so the pooled value equals the mean of per-position projections
    ``w·h_i + b``: ``forward`` returns those, and pooling at any turn end is one cumulative sum.
    """

    def __init__(self, lm: nn.Module, hidden_size: int):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         logits_to_keep=1).hidden_states[-1]
        return self.head(hidden.float())[..., 0]


@dataclass
class PairGroup:
    """Trajectories of one task forwarded together and the pairs among them (local indices)."""

    members: list[int]  # indices into the trajectory list
    pairs: list[tuple[int, int]]  # (chosen, rejected) positions in ``members``


class Critic:
    """A critic model (training or trained) and the two ways it scores: whole trajectories
    (training, accuracy) and candidate actions at one turn (best-of-N ranking)."""

    def __init__(self, model: nn.Module, tokenizer, settings: CriticSettings, *, reference_disables_adapter: bool = True):
        self.model = model  # a TokenScorer (advantage) or a ValueModel around the peft model
        self.tokenizer = tokenizer
        self.settings = settings
        self.pad_id = tokenizer.pad_token_id
        self.reference = ReferenceLogprobs()
        # π_ref: the base with the adapter disabled (the critic), or the model as loaded, before
        # training (multi-turn DPO continuing an actor version's adapter).
        self.reference_disables_adapter = reference_disables_adapter

    @property
    def lm(self) -> nn.Module:
        """The peft model inside (for π_ref via ``disable_adapter``, scoring and saving)."""
        return unwrap(self.model).lm

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    # -- trajectories -----------------------------------------------------------------------------
    def tokens(self, episode: Episode) -> DialogueTokens:
        return dialogue_tokens(episode, self.tokenizer, privileged=self.settings.privileged,
                               max_length=self.settings.max_length,
                               max_privileged_tokens=self.settings.max_privileged_tokens)

    def action_tokens(self, privileged: str, prompt: str, action: str) -> DialogueTokens:
        """One action after o_t as a one-turn trajectory (with c unless the critic is blind to it)."""
        return action_tokens(self.tokenizer, privileged if self.settings.privileged else None, prompt, action,
                             max_length=self.settings.max_length,
                             max_privileged_tokens=self.settings.max_privileged_tokens)

    def fill_reference(self, sequences: Sequence[DialogueTokens], progress: bool = True) -> None:
        """π_ref log-probs of every sequence's agent tokens, computed once (cached by token hash)."""
        if self.settings.head == "advantage":
            self.reference.fill(self.lm, [(s.key, s.input_ids, _agent_mask(s)) for s in sequences],
                                pad_id=self.pad_id, disable_adapter=self.reference_disables_adapter,
                                progress=progress)

    def trajectory_scores(self, model: nn.Module, sequences: Sequence[DialogueTokens]) -> torch.Tensor:
        """S(τ) = Σ_t A_θ(o_t, a_t, c) of each sequence (Eq. 3 summed over turns); one forward pass.

        For the value head, S(τ) is the value after the last agent turn.
        """
        if self.settings.head == "value":
            return torch.stack([values[-1] for values in self.turn_values(model, sequences)])
        input_ids, attention_mask, target_mask = collate(
            [s.input_ids for s in sequences], [_agent_mask(s) for s in sequences], self.pad_id, self.device)
        logp_theta = model(input_ids, attention_mask, target_mask)
        logp_ref = torch.cat([self.reference[s.key] for s in sequences]).to(logp_theta.device)
        # Number every agent turn of the batch 0..K-1, and remember its trajectory.
        token_turn, turn_trajectory, offset = [], [], 0
        for b, s in enumerate(sequences):
            token_turn += [offset + t for t in s.token_turn[1:] if t >= 0]  # position 0 is never scored
            turn_trajectory += [b] * s.num_turns
            offset += s.num_turns
        device = logp_theta.device
        advantages = sweet.turn_advantages(logp_theta, logp_ref, torch.tensor(token_turn, device=device), offset,
                                           self.settings.length_normalize)
        return sweet.trajectory_scores(advantages, torch.tensor(turn_trajectory, device=device), len(sequences))

    def turn_values(self, model: nn.Module, sequences: Sequence[DialogueTokens]) -> list[torch.Tensor]:
        """Value head: V after each agent turn (mean-pooled over every token up to the turn's end)."""
        input_ids, attention_mask, _ = collate(
            [s.input_ids for s in sequences], [[False] * len(s.input_ids) for s in sequences], self.pad_id, self.device)
        projections = model(input_ids=input_ids, attention_mask=attention_mask)
        values = []
        for b, s in enumerate(sequences):
            pooled = projections[b, : len(s.input_ids)].cumsum(0) / torch.arange(
                1, len(s.input_ids) + 1, device=projections.device)
            ends = _turn_ends(s)
            values.append(pooled[torch.tensor(ends, device=pooled.device)])
        return values

    @torch.no_grad()
    def scores(self, sequences: Sequence[DialogueTokens], batch_size: int = 4) -> list[float]:
        """S(τ) of each sequence, without gradients (accuracy, evaluation)."""
        self.fill_reference(sequences, progress=False)
        was_training = self.model.training
        self.model.eval()
        result: list[float] = []
        for start in range(0, len(sequences), batch_size):
            result += self.trajectory_scores(self.model, sequences[start:start + batch_size]).tolist()
        self.model.train(was_training)
        return result

    # -- candidate actions at one turn ------------------------------------------------------------
    @torch.no_grad()
    def score_candidates(self, privileged: str, prompt: str, candidates: Sequence[str], chunk_size: int = 4) -> list[float]:
        """A(o_t, a, c) of each candidate action ``a`` after the agent's prompt o_t (value head: V).

        Each candidate is the one-turn trajectory [c] + o_t + a of ``action_tokens``, as human pairs
        are in training; c and o_t, their common opening, are forwarded once and their key/value
        cache is shared by all candidates (``shared_prefix_logprobs``), for π_θ and for π_ref (the
        adapter disabled).
        """
        sequences = [self.action_tokens(privileged, prompt, c) for c in candidates]
        was_training = self.model.training
        self.model.eval()
        try:
            if self.settings.head == "value":
                return [values[-1].item() for start in range(0, len(sequences), chunk_size)
                        for values in self.turn_values(self.model, sequences[start:start + chunk_size])]
            ids, masks = [s.input_ids for s in sequences], [_agent_mask(s) for s in sequences]
            theta = shared_prefix_logprobs(self.lm, ids, masks, self.pad_id, self.device, chunk_size)
            with self.lm.disable_adapter():
                ref = shared_prefix_logprobs(self.lm, ids, masks, self.pad_id, self.device, chunk_size)
        finally:
            self.model.train(was_training)
        # Eq. 3 for the one turn of each candidate.
        return [sweet.turn_advantages(lp_theta, lp_ref, torch.zeros(len(lp_theta), dtype=torch.long,
                                                                    device=lp_theta.device),
                                      1, self.settings.length_normalize)[0].item()
                for lp_theta, lp_ref in zip(theta, ref)]

    # -- persistence --------------------------------------------------------------------------------
    def save(self, out_dir: Path) -> None:
        module = unwrap(self.model)
        self.lm.save_pretrained(out_dir / "adapter")
        if isinstance(module, ValueModel):
            torch.save(module.head.state_dict(), out_dir / "value_head.pt")
        self.tokenizer.save_pretrained(out_dir / "adapter")
        (out_dir / CRITIC_FILE).write_text(json.dumps(asdict(self.settings), indent=2))  # written last: "done"


def load_critic(directory: str | Path, device: torch.device | None = None) -> Critic:
    """A trained critic (``critic.json`` + adapter [+ value head]) ready to score, in eval mode."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if not (directory / CRITIC_FILE).is_file():
        raise FileNotFoundError(f"no trained critic in {directory} (expected {CRITIC_FILE}); run `python -m training critic`")
    settings = CriticSettings(**json.loads((directory / CRITIC_FILE).read_text()))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    source, _ = weights_source(settings.base)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source, dtype=dtype), directory / "adapter")
    model: nn.Module = TokenScorer(lm)
    if settings.head == "value":
        model = ValueModel(lm, lm.config.hidden_size)
        model.head.load_state_dict(torch.load(directory / "value_head.pt"))
    model.to(device).eval()
    return Critic(model, load_tokenizer(source), settings)


def _agent_mask(sequence: DialogueTokens) -> list[bool]:
    return [t >= 0 for t in sequence.token_turn]


def _turn_ends(sequence: DialogueTokens) -> list[int]:
    """Index of the last token of each agent turn (a turn cut away entirely ends where the next begins)."""
    ends = [0] * sequence.num_turns
    for i, t in enumerate(sequence.token_turn):
        if t >= 0:
            ends[t] = i
    for t in range(1, sequence.num_turns):
        ends[t] = max(ends[t], ends[t - 1])
    return ends


def pair_groups(pairs: Sequence[tuple[int, int]], task_of: Sequence[str], lengths: Sequence[int],
                max_tokens: int) -> list[PairGroup]:
    """Pack the pairs of each task into groups whose distinct trajectories hold at most
    ``max_tokens`` tokens together (memory grows with tokens per forward pass)."""
    by_task: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for chosen, rejected in pairs:
        by_task[task_of[chosen]].append((chosen, rejected))
    groups: list[PairGroup] = []
    for task_pairs in by_task.values():
        members: list[int] = []
        local: list[tuple[int, int]] = []
        for chosen, rejected in task_pairs:
            new = [i for i in (chosen, rejected) if i not in members]
            if local and sum(lengths[i] for i in members + new) > max_tokens:
                groups.append(PairGroup(members, local))
                members, local, new = [], [], [chosen, rejected]
            members += new
            local.append((members.index(chosen), members.index(rejected)))
        groups.append(PairGroup(members, local))
    return groups


def pair_group_loss(critic: Critic, model: nn.Module, sequences, group: PairGroup, beta: float):
    """Eq. 2 over one group: every trajectory forwarded once, then −log σ(β (S(τ+) − S(τ−))) per pair."""
    batch = [sequences[i] for i in group.members]
    scores = critic.trajectory_scores(model, batch)
    chosen = scores[[a for a, _ in group.pairs]]
    rejected = scores[[b for _, b in group.pairs]]
    loss, stats = sweet.bradley_terry_loss(chosen, rejected, beta)
    return loss, stats, sum(len(s.input_ids) for s in batch)


def split_tasks(task_ids: Sequence[str], eval_fraction: float, seed: int) -> set[str]:
    """Task ids held out for evaluation (none when there are fewer than two tasks)."""
    unique = sorted(set(task_ids))
    if eval_fraction <= 0 or len(unique) < 2:
        return set()
    count = min(len(unique) - 1, max(1, round(len(unique) * eval_fraction)))
    return set(random.Random(seed).sample(unique, count))


def pairwise_accuracy(critic: Critic, sequences: Sequence[DialogueTokens], pairs: Sequence[tuple[int, int]]) -> float:
    """Fraction of pairs with S(τ+) > S(τ−), ties counting half; each trajectory is scored once."""
    if not pairs:
        return float("nan")
    used = sorted({i for pair in pairs for i in pair})
    scores = dict(zip(used, critic.scores([sequences[i] for i in used])))
    return sweet.pairwise_accuracy(torch.tensor([scores[a] - scores[b] for a, b in pairs]))


def build_critic(config: CriticConfig, device: torch.device) -> Critic:
    """A fresh critic: the base model of ``config.model`` with a new LoRA adapter (and value head)."""
    if config.head not in HEADS:
        raise ValueError(f"unknown critic head {config.head!r}: use one of {', '.join(HEADS)}")
    base = base_spec(config.model)
    options = copy.copy(config)
    options.model = base  # the critic always starts from the base model, never from an actor's adapter
    lm, tokenizer = load_lora_model(base, options, device=device)
    model: nn.Module = ValueModel(lm, lm.config.hidden_size).to(device) if config.head == "value" else TokenScorer(lm)
    settings = CriticSettings(base=base, head=config.head, privileged=config.privileged,
                              length_normalize=config.length_normalize, beta=config.beta,
                              max_length=options.max_length, max_privileged_tokens=config.max_privileged_tokens)
    return Critic(model, tokenizer, settings)


def train_critic(config: CriticConfig, episodes: Sequence[Episode] | None = None) -> dict:
    """Train the critic on the trajectory pairs of ``config.data`` (or ``episodes``); returns a summary."""
    out = Path(config.out)
    if (out / CRITIC_FILE).is_file() and (out / "summary.json").is_file() and config.resume:
        return {**json.loads((out / "summary.json").read_text()), "reused": True}
    episodes = list(episodes) if episodes is not None else read_episodes(config.data, config.kind)
    accelerator = make_accelerator()
    critic = build_critic(config, accelerator.device)
    critic.reference = ReferenceLogprobs(out / "reference_logprobs.pt", model_id=reference_model_id(
        critic.settings.base, critic.lm, adapter_disabled=True))
    save_config(config, out / "config.json")

    pairs = trajectory_pairs(episodes, config.reward_key, config.pairing, config.min_reward_gap)
    used = sorted({i for pair in pairs for i in pair})
    if config.head == "value":  # the value head learns from every scored trajectory, paired or not
        used = sorted({i for members in episodes_by_task(episodes, config.reward_key).values() for i, _ in members})
    sequences = {i: critic.tokens(episodes[i]) for i in used}
    task_of = [e.task.id for e in episodes]
    human = human_preference_pairs(config.data, config.preferences) if config.human_pairs else []
    if human and config.head == "value":
        raise ValueError("--human-pairs trains the advantage critic; the value head learns from outcomes only")
    for row in human:  # a turn-level pair is a pair of one-turn trajectories, indexed after the episodes
        chosen, rejected = len(task_of), len(task_of) + 1
        sequences[chosen] = critic.action_tokens(row["privileged"], row["prompt"], row["chosen"])
        sequences[rejected] = critic.action_tokens(row["privileged"], row["prompt"], row["rejected"])
        task_of += [row["task_id"] or f"human-{chosen}"] * 2
        pairs.append((chosen, rejected))
        used += [chosen, rejected]
    if not used:
        raise ValueError("no trajectory pairs in the data: each task needs trajectories with different rewards "
                         f"(pairing={config.pairing}, reward_key={config.reward_key})")
    held_out = split_tasks([task_of[i] for i in used], config.eval_fraction, config.seed)
    train_pairs = [p for p in pairs if task_of[p[0]] not in held_out]
    eval_pairs = [p for p in pairs if task_of[p[0]] in held_out]
    critic.fill_reference([sequences[i] for i in used], progress=config.progress)

    seen: list[tuple[int, float]] = []  # (pairs, accuracy) of every micro-batch, in training order

    def advantage_loss(model, group: PairGroup):
        loss, stats, tokens = pair_group_loss(critic, model, sequences, group, config.beta)
        seen.append((len(group.pairs), stats["accuracy"]))
        return loss, stats, tokens

    def value_loss(model, members: list[int]):
        batch = [sequences[i] for i in members]
        values = critic.turn_values(model, batch)
        targets = [outcome(episodes[i], config.reward_key) for i in members]
        loss = torch.stack([((v - r) ** 2).mean() for v, r in zip(values, targets)]).mean()
        return loss, {"mse": loss.item()}, sum(len(s.input_ids) for s in batch)

    def evaluate() -> dict[str, float]:
        return {"accuracy": pairwise_accuracy(critic, sequences, eval_pairs)} if eval_pairs else {}

    if config.head == "advantage":
        lengths = {i: len(s.input_ids) for i, s in sequences.items()}
        items: list = pair_groups(train_pairs, task_of, lengths, config.max_group_tokens)
        loss_fn = advantage_loss
    else:
        items = [[i] for i in used if task_of[i] not in held_out]  # one trajectory per micro-batch
        loss_fn = value_loss
    if not items:
        raise ValueError("every pair's task was held out for evaluation: lower --eval-fraction")
    result = optimise(critic.model, items, loss_fn, config, out, accelerator=accelerator, name="critic",
                        evaluate=evaluate if eval_pairs else None,
                        plot_keys=("loss", "accuracy", "margin") if config.head == "advantage" else ("loss", "accuracy"))
    if config.head == "advantage" and seen:
        # As trainers log it: measured in the last epoch's own forward passes (each group before its
        # update), rather than by a further pass over every trajectory.
        last_epoch = seen[-len(items):]
        train_accuracy = sum(n * a for n, a in last_epoch) / sum(n for n, _ in last_epoch)
    else:
        train_accuracy = pairwise_accuracy(critic, sequences, train_pairs)
    summary = {"out": str(out), "pairs": len(pairs), "human_pairs": len(human), "train_pairs": len(train_pairs),
               "eval_pairs": len(eval_pairs),
               "trajectories": len(used), "steps": result.steps, "train_accuracy": round(train_accuracy, 4),
               "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1), **{
                   k: v for k, v in result.last.items() if k.startswith("eval_")}}
    if accelerator.is_main_process:
        critic.save(out)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary
