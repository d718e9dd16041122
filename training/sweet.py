"""SWEET-RL's equations in one place (Zhou et al. 2025, arXiv 2503.15478, §4).

Notation, as in the paper:

    c            training-time (privileged) information: the task's reference solution
    o_t          the agent's observation at turn t: the dialogue so far, as the prompt it saw
    a_t          the agent's action at turn t: its message, tokens a_t^1 .. a_t^{L_t}
    τ+, τ−       a preferred and a dispreferred trajectory of the same task
    π_θ          the model being trained (critic: base + LoRA; actor: policy + LoRA)
    π_ref        its frozen reference (critic: the same base with the adapter disabled;
                 actor: the policy before this round of training)
    β, β′        inverse temperatures of the critic's and the actor's losses

Critic (§4.2). The advantage of a turn is a length-normalised log-likelihood ratio, Eq. (3):

    A_θ(o_t, a_t, c) = (1/L_t) Σ_l [ log π_θ(a_t^l | o_t, a_t^{<l}, c) − log π_ref(a_t^l | o_t, a_t^{<l}, c) ]

and it is trained with a Bradley–Terry objective over whole trajectories, Eq. (2):

    J_A(θ) = − E_{(τ+, τ−)} log σ( β · Σ_t A_θ(o_t^+, a_t^+, c) − β · Σ_t A_θ(o_t^−, a_t^−, c) )

Actor (§4.3). For each turn, candidates sampled from the actor given o_t only are ranked by A;
a chosen a+ (top half) and a rejected a− (bottom half) give a DPO loss, Eq. (4), plus an NLL
term on a+ (coefficient 0.01 in the reference scripts):

    J_π(φ) = − E log σ( β′ · log[π_φ(a+|o_t) / π_ref(a+|o_t)] − β′ · log[π_φ(a−|o_t) / π_ref(a−|o_t)] )
             + λ · NLL_φ(a+ | o_t)

Every function here works on flat per-token tensors plus an index saying which turn (or which
sequence) each token belongs to, so a whole batch of trajectories is one forward pass and one
``index_add``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(label | prefix) for each row of ``logits`` ([N, V]) and its ``labels`` ([N]), in float32."""
    logits = logits.float()
    return logits.gather(-1, labels[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def turn_advantages(
    logp_theta: torch.Tensor, logp_ref: torch.Tensor, token_turn: torch.Tensor, num_turns: int,
    length_normalize: bool = True,
) -> torch.Tensor:
    """Eq. (3): A(o_t, a_t, c) for every agent turn, from the per-token log-probs of its tokens.

    ``token_turn[i]`` is the turn (0 .. num_turns-1) that token i belongs to. With
    ``length_normalize=False`` (an ablation) the log-ratio is summed instead of averaged.
    """
    log_ratio = logp_theta - logp_ref
    per_turn = log_ratio.new_zeros(num_turns).index_add(0, token_turn, log_ratio)
    if not length_normalize:
        return per_turn
    lengths = torch.bincount(token_turn, minlength=num_turns).clamp(min=1)  # a turn with no tokens: A = 0
    return per_turn / lengths


def trajectory_scores(advantages: torch.Tensor, turn_trajectory: torch.Tensor, num_trajectories: int) -> torch.Tensor:
    """Σ_t A(o_t, a_t, c) for every trajectory; ``turn_trajectory[k]`` is the trajectory of turn k."""
    return advantages.new_zeros(num_trajectories).index_add(0, turn_trajectory, advantages)


def bradley_terry_loss(
    score_chosen: torch.Tensor, score_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (2): −log σ(β (S(τ+) − S(τ−))), averaged over pairs; also the pairwise accuracy and margin."""
    margin = beta * (score_chosen - score_rejected)
    loss = -F.logsigmoid(margin).mean()
    stats = {"accuracy": pairwise_accuracy(margin), "margin": margin.mean().item()}
    return loss, stats


def pairwise_accuracy(margin: torch.Tensor) -> float:
    """Fraction of pairs ordered right (margin > 0), a tie counting half (chance = 0.5)."""
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item()


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor, beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (4): DPO on summed completion log-probs log π(a|o_t) of chosen and rejected actions."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    stats = {"accuracy": pairwise_accuracy(margin), "margin": margin.mean().item(),
             "chosen_reward": chosen_reward.mean().item(), "rejected_reward": rejected_reward.mean().item()}
    return loss, stats


def sequence_sums(values: torch.Tensor, token_sequence: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Σ over the tokens of each sequence (e.g. log π(a|o) of each completion)."""
    return values.new_zeros(num_sequences).index_add(0, token_sequence, values)


def mean_nll(logp: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per token (the actor's NLL term on chosen actions, and RFT's loss)."""
    return -logp.mean() if logp.numel() else logp.new_zeros(())


def actor_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor, chosen_token_logp: torch.Tensor, beta: float, nll_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The actor's objective: Eq. (4) plus λ · NLL of the chosen actions' tokens."""
    loss, stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    nll = mean_nll(chosen_token_logp)
    stats["nll"] = nll.item()
    return loss + nll_coef * nll, stats
