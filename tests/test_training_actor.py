"""The actor: batched best-of-N sampling, ranking into top/bottom-half pairs, DPO + NLL that moves
the policy towards the chosen actions, and human preference pairs from the app joining in."""

from __future__ import annotations

import json
import random

import pytest
import torch

from simulators.domain import Task, Turn
from simulators.llm import load_model
from simulators.store import SessionStore
from training.actor import ActorConfig, group_by_prompt, ranked_pairs, sample_candidates, train_actor
from training.data import TurnRecord
from training.models import load_lora_model

PROMPT = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n"
CHOSEN = "def add(a, b):\n    return a + b"
REJECTED = "Can you tell me more about the inputs?"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ranked_pairs_take_chosen_from_the_top_half_and_rejected_from_the_bottom_half():
    candidates = [f"answer {i}" for i in range(16)]
    scores = random.Random(1).sample(range(16), 16)  # a permutation: rank i has score 15 - i
    pairs = ranked_pairs(candidates, scores, 4, random.Random(0))
    assert len(pairs) == 4 and len(set(pairs)) == 4
    for chosen, rejected in pairs:
        assert scores[chosen] >= 8 and scores[rejected] <= 7
    # Identical texts never make a pair; a turn whose candidates all agree gives none.
    assert ranked_pairs(["same"] * 16, list(range(16)), 4, random.Random(0)) == []
    assert ranked_pairs(["a", "b", "c"], [3.0, 2.0, 1.0], 4, random.Random(0)) == [(0, 2)]  # middle one left out


def test_all_candidates_of_a_turn_come_from_one_batched_decode(tiny_model_dir):
    config = ActorConfig(model=str(tiny_model_dir), best_of_n=6, max_new_tokens=8, sampler="hf", progress=False)
    model, tokenizer = load_lora_model(config.model, config, device=torch.device("cpu"))
    forwards = []  # (rows, tokens) of every forward pass

    def record(module, args, kwargs):
        forwards.append(tuple(kwargs["input_ids"].shape))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    records = [TurnRecord(PROMPT, "", "c", "t", 0, 0), TurnRecord(PROMPT + "def", "", "c", "t", 0, 1)]
    candidates = sample_candidates(model, tokenizer, records, config, progress=False)
    hook.remove()
    assert [len(c) for c in candidates] == [6, 6]
    # Per turn: the prompt is encoded once (one row, many tokens), then its N candidates decode
    # together, one token per row per step (rows leave as they end).
    prompts = [i for i, (rows, tokens) in enumerate(forwards) if tokens > 1]
    assert len(prompts) == 2 and all(forwards[i][0] == 1 for i in prompts)
    for start, end in zip(prompts, prompts[1:] + [len(forwards)]):
        steps = forwards[start + 1:end]
        assert steps and steps[0] == (6, 1) and all(tokens == 1 and rows <= 6 for rows, tokens in steps)
    assert len(set(candidates[0])) > 1  # sampled, not one greedy answer repeated


def test_group_by_prompt_shares_completions_between_pairs():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "c"},
            {"prompt": "q", "chosen": "x", "rejected": "x"}]
    groups = group_by_prompt(rows)
    assert len(groups) == 1 and groups[0].completions == ["a", "b", "c"] and groups[0].pairs == [(0, 1), (0, 2)]


def test_dpo_raises_the_margin_and_human_pairs_join_from_the_app(tiny_model_dir, tmp_path):
    # Critic-ranked pairs arrive as a file; one more pair comes from a person's edit in the app.
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}) + "\n"
                             for _ in range(2)))
    db = tmp_path / "collab.sqlite"
    store = SessionStore(db)
    task = Task(id="t1", kind="backend", problem_description="Add two numbers.",
                ground_truth="def add(a, b):\n    return a + b", test_cases={"test1": "add(1, 2)"})
    session = store.create_session(task, mode="human", human="person:ana", model_version="base")
    store.add_turn(session, Turn("human", task.problem_description))
    turn = store.add_turn(session, Turn("agent", "return a - b", input=PROMPT, output="return a - b"))
    store.add_feedback(session, "edit", turn_idx=turn, before="return a - b", after="return a + b")

    config = ActorConfig(model=str(tiny_model_dir), data=str(db), pairs=str(pairs), out=str(tmp_path / "actor"),
                         epochs=12, gradient_accumulation_steps=1, learning_rate=5e-3, lora_r=8, lora_alpha=16,
                         lora_dropout=0.0, max_length=512, progress=False)
    summary = train_actor(config)

    assert summary["pair_sources"] == {"file": 2, "human": 1}
    assert summary["prompts"] == 1 and summary["pairs"] == 2  # same prompt: one forward pass, two pairs
    log = [json.loads(line) for line in (tmp_path / "actor" / "log.jsonl").read_text().splitlines()]
    assert log[0]["margin"] == pytest.approx(0.0, abs=1e-6)  # π_θ = π_ref before the first update
    assert log[-1]["margin"] > 0.5 and log[-1]["accuracy"] == 1.0
    assert (tmp_path / "actor" / "curves.png").is_file()
    # The saved adapter loads as base + adapter and prefers the chosen action more than the base does.
    base = load_model(str(tiny_model_dir))
    tuned = load_model(str(tiny_model_dir), adapter=summary["adapter"])

    def gap(model):
        return sum(model.completion_logprobs(PROMPT, CHOSEN)) - sum(model.completion_logprobs(PROMPT, REJECTED))

    assert gap(tuned) > gap(base) + 5.0
