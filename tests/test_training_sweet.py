"""SWEET's equations against hand computations, the critic's token layout, and its reference model."""

from __future__ import annotations

import math

import pytest
import torch

from simulators.domain import Task
from training import sweet
from training.critic import CriticConfig, build_critic
from training.data import action_ids, dialogue_tokens, encode, privileged_prefix
from training.logprobs import collate, common_prefix_length, masked_token_logprobs, shared_prefix_logprobs
from training.synthetic import scripted_episode

TASK = Task(id="t-add", kind="backend", problem_description="Write a Python function that adds two numbers.",
            ground_truth="def add(a, b):\n    return a + b", test_cases={"test1": "add(1, 2)"})
AGENT = ["Can you tell me more about the inputs?", "I WANT TO ANSWER: def add(a, b): return a + b"]
HUMAN = ["The list may be empty; return 0 then."]
SYSTEM = "You are a helpful assistant."  # short: the tiny model's context is 512 tokens


def episode_for(tokenizer, reward=None):
    return scripted_episode(TASK, AGENT, HUMAN, tokenizer, reward=reward, system_prompt=SYSTEM)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_turn_advantages_and_bradley_terry_loss_match_a_hand_computation():
    # Two trajectories: τ+ has turns 0 (3 tokens) and 1 (2 tokens); τ− has turn 2 (4 tokens).
    logp_theta = torch.tensor([-1.0, -2.0, -0.5, -0.2, -0.4, -3.0, -1.0, -2.0, -0.1])
    logp_ref = torch.tensor([-1.5, -1.0, -0.5, -0.6, -0.4, -2.0, -2.0, -1.0, -0.3])
    token_turn = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    turn_trajectory = torch.tensor([0, 0, 1])
    beta = 0.1

    advantages = sweet.turn_advantages(logp_theta, logp_ref, token_turn, 3)
    scores = sweet.trajectory_scores(advantages, turn_trajectory, 2)
    loss, stats = sweet.bradley_terry_loss(scores[:1], scores[1:], beta)

    ratios = (logp_theta - logp_ref).tolist()
    a0, a1, a2 = sum(ratios[0:3]) / 3, sum(ratios[3:5]) / 2, sum(ratios[5:9]) / 4
    assert advantages.tolist() == pytest.approx([a0, a1, a2])
    assert scores.tolist() == pytest.approx([a0 + a1, a2])
    margin = beta * ((a0 + a1) - a2)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-margin))))
    assert stats["accuracy"] == float(margin > 0) and stats["margin"] == pytest.approx(margin)

    summed = sweet.turn_advantages(logp_theta, logp_ref, token_turn, 3, length_normalize=False)
    assert summed.tolist() == pytest.approx([sum(ratios[0:3]), sum(ratios[3:5]), sum(ratios[5:9])])


def test_actor_loss_is_dpo_plus_weighted_nll():
    chosen, rejected = torch.tensor([-5.0, -7.0]), torch.tensor([-6.0, -6.5])
    ref_chosen, ref_rejected = torch.tensor([-5.5, -7.0]), torch.tensor([-5.0, -7.0])
    chosen_tokens = torch.tensor([-1.0, -2.0, -3.0])
    loss, stats = sweet.actor_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, beta=0.1, nll_coef=0.01)

    margins = [0.1 * ((-5.0 + 5.5) - (-6.0 + 5.0)), 0.1 * ((-7.0 + 7.0) - (-6.5 + 7.0))]
    dpo = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / 2
    assert loss.item() == pytest.approx(dpo + 0.01 * 2.0)
    assert stats["nll"] == pytest.approx(2.0) and stats["accuracy"] == 0.5  # the second pair is inverted


@pytest.fixture(scope="module")
def critic(tiny_model_dir):
    config = CriticConfig(model=str(tiny_model_dir), lora_r=4, max_length=512)
    critic = build_critic(config, torch.device("cpu"))
    with torch.no_grad():  # move off LoRA's zero init so π_θ ≠ π_ref
        for name, param in critic.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    return critic


def test_turn_masks_cover_exactly_the_agents_words(critic):
    episode = episode_for(critic.tokenizer, reward=1.0)
    tokens = dialogue_tokens(episode, critic.tokenizer, privileged=True)
    decode = critic.tokenizer.decode

    for t, text in enumerate(AGENT):  # each message and the end-of-turn token that closes it
        ids = [i for i, turn in zip(tokens.input_ids, tokens.token_turn) if turn == t]
        assert decode(ids) == text + "<|im_end|>"
    context = decode([i for i, turn in zip(tokens.input_ids, tokens.token_turn) if turn < 0])
    c = privileged_prefix(TASK.privileged_information)
    assert context.startswith(c)  # c comes first, before the dialogue
    assert HUMAN[0] in context and TASK.problem_description in context
    assert not any(text in context for text in AGENT)
    # Without c, the same dialogue is the last agent prompt plus its message, token for token.
    plain = dialogue_tokens(episode, critic.tokenizer, privileged=False)
    last = episode.agent_turns[-1]
    assert decode(plain.input_ids) == last.input + last.content + "<|im_end|>"
    assert tokens.input_ids[-len(plain.input_ids):] == plain.input_ids
    assert len(tokens.input_ids) - len(plain.input_ids) == len(encode(critic.tokenizer, c))


def test_one_pass_log_probs_equal_per_turn_completion_log_probs(critic):
    """The single forward pass over the dialogue gives each agent token the same log-prob as
    scoring that turn alone (its message and end-of-turn token) as a completion of (c + its prompt)."""
    episode = episode_for(critic.tokenizer)
    tokens = critic.tokens(episode)
    mask = [t >= 0 for t in tokens.token_turn]
    critic.model.eval()
    with torch.no_grad():
        flat = masked_token_logprobs(critic.lm, *collate([tokens.input_ids], [mask], 0, torch.device("cpu")))
    prefix = encode(critic.tokenizer, privileged_prefix(TASK.privileged_information))
    per_turn = []
    for turn in episode.agent_turns:
        context, action = prefix + encode(critic.tokenizer, turn.input), action_ids(critic.tokenizer, turn.content)
        with torch.no_grad():
            per_turn.append(masked_token_logprobs(critic.lm, *collate(
                [context + action], [[False] * len(context) + [True] * len(action)], 0, torch.device("cpu"))))
    assert flat.tolist() == pytest.approx(torch.cat(per_turn).tolist(), abs=1e-4)


def test_disabled_adapter_reference_equals_the_base_model(critic, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    episode = episode_for(critic.tokenizer)
    tokens = critic.tokens(episode)
    critic.fill_reference([tokens], progress=False)
    mask = [t >= 0 for t in tokens.token_turn]
    batch = collate([tokens.input_ids], [mask], 0, torch.device("cpu"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected = masked_token_logprobs(base, *batch)
        adapted = masked_token_logprobs(critic.lm.eval(), *batch)
    assert critic.reference[tokens.key].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert not torch.allclose(adapted, expected, atol=1e-3)  # the adapter is really on otherwise
    # ... and the per-candidate path agrees with it: A(o_t, a_t, c) of the last turn.
    last = episode.agent_turns[-1]
    score = critic.score_candidates(TASK.privileged_information, last.input, [last.content])[0]
    turn = torch.tensor([t for t in tokens.token_turn[1:] if t >= 0])
    advantages = sweet.turn_advantages(adapted, expected, turn, tokens.num_turns)
    assert score == pytest.approx(advantages[-1].item(), abs=1e-4)


def test_trajectories_that_open_alike_share_one_forward_of_their_opening(critic):
    """The reference pass forwards a task's common opening once: the log-probs are those of full
    forwards, whether or not the opening itself holds scored tokens."""
    import random

    rng = random.Random(0)
    opening = [rng.randrange(5, 200) for _ in range(80)]
    sequences = [opening + [rng.randrange(5, 200) for _ in range(n)] for n in (5, 17, 30)]
    masks = [[rng.random() < 0.5 for _ in s] for s in sequences]
    no_scored_opening = [[i >= 80 for i in range(len(s))] for s in sequences]
    cpu = torch.device("cpu")
    with torch.no_grad():
        for targets in (masks, no_scored_opening):
            shared = shared_prefix_logprobs(critic.lm, sequences, targets, 0, cpu)  # one tensor per sequence
            full = masked_token_logprobs(critic.lm, *collate(sequences, targets, 0, cpu))
            assert [len(values) for values in shared] == [sum(t[1:]) for t in targets]
            assert torch.cat(shared).tolist() == pytest.approx(full.tolist(), abs=1e-4)
    assert common_prefix_length(sequences) == 80 + (sequences[0][80] == sequences[1][80] == sequences[2][80])
