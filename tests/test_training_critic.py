"""The critic learns from trajectory pairs, its ablations behave as designed, and training resumes.

The synthetic preference set: every task has the same problem statement, and its reference c
names a secret word (ABC or XYZ). The preferred trajectory's final answer says c's word, the
other says the other word. Only a critic that reads c can tell them apart: without c, the
preferred trajectory of an ABC task and the rejected one of an XYZ task are the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from simulators.domain import Task
from simulators.llm.scripted import ScriptedModel
from simulators.tasks import TaskFileError
from training.critic import (
    CriticConfig,
    CriticSettings,
    build_critic,
    load_critic,
    pairwise_accuracy,
    train_critic,
)
from training.data import dialogue_tokens, encode, privileged_prefix, trajectory_pairs
from training.evaluate import CriticGuidedAgent
from training.options import TrainOptions
from training.synthetic import scripted_episode
from training.trainer import make_accelerator, optimise

SYSTEM = "You are a helpful assistant."
WORDS = ("ABC", "XYZ")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def secret_word_episodes(tokenizer, count: int, first: int = 0):
    episodes = []
    for i in range(first, first + count):
        word, other = WORDS[i % 2], WORDS[1 - i % 2]
        task = Task(id=f"secret-{i}", kind="backend", problem_description="Write a function secret.",
                    ground_truth=f"def secret(): return '{word}'", test_cases={"test1": "secret()"})
        for sample, (said, reward) in enumerate([(word, 1.0), (other, 0.0)]):
            episodes.append(scripted_episode(
                task, ["Any details?", f"I WANT TO ANSWER: return '{said}'"], ["Yes."], tokenizer,
                reward=reward, scores={"success": reward == 1.0}, sample=sample, system_prompt=SYSTEM))
    return episodes


def critic_config(tiny_model_dir, out, **overrides) -> CriticConfig:
    settings = dict(model=str(tiny_model_dir), out=str(out), epochs=3, gradient_accumulation_steps=1,
                    learning_rate=5e-3, lora_r=8, lora_alpha=16, lora_dropout=0.0, eval_fraction=0.0,
                    max_length=512, progress=False)
    return CriticConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def held_out_accuracy(critic, episodes) -> float:
    return pairwise_accuracy(critic, [critic.tokens(e) for e in episodes], trajectory_pairs(episodes))


def test_critic_accuracy_rises_from_chance_when_it_sees_c(tiny_model_dir, tokenizer, tmp_path):
    train, held_out = secret_word_episodes(tokenizer, 8), secret_word_episodes(tokenizer, 8, first=100)
    config = critic_config(tiny_model_dir, tmp_path / "critic", save_steps=10)

    summary = train_critic(config, train)

    critic = load_critic(tmp_path / "critic", torch.device("cpu"))
    assert summary["steps"] == 24 and summary["pairs"] == 8  # 8 pairs (one per task) × 3 epochs
    assert held_out_accuracy(critic, held_out) >= 0.9
    with critic.lm.disable_adapter():  # the untrained critic (π_θ = π_ref): every A is 0 (up to rounding)
        assert max(abs(score) for score in critic.scores([critic.tokens(e) for e in held_out])) < 1e-5
    log = [json.loads(line) for line in (tmp_path / "critic" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))
    assert abs(log[0]["margin"]) < 1e-5 and log[-1]["loss"] < log[0]["loss"]  # starts from π_θ = π_ref
    assert (tmp_path / "critic" / "curves.png").stat().st_size > 5000
    # Ranking candidates: the action that says c's word gets the higher advantage.
    task, prompt = held_out[0].task, held_out[0].agent_turns[-1].input
    right, wrong = critic.score_candidates(task.privileged_information, prompt,
                                           ["I WANT TO ANSWER: return 'ABC'", "I WANT TO ANSWER: return 'XYZ'"])
    assert right > wrong
    # Best-of-N evaluation: of the agent's candidates, the critic sends the one c agrees with.
    for task_episode in held_out[0:4:2]:  # an ABC task and an XYZ task
        word = "ABC" if "ABC" in task_episode.task.ground_truth else "XYZ"
        agent = ScriptedModel(["I WANT TO ANSWER: return 'XYZ'", "I WANT TO ANSWER: return 'ABC'"])
        guided = CriticGuidedAgent(agent, critic, [task_episode.task], candidates=2)
        conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task_episode.task.problem_description},
                        {"role": "assistant", "content": "Any details?"}, {"role": "user", "content": "Yes."}]
        assert guided.sample([conversation])[0] == [f"I WANT TO ANSWER: return '{word}'"]


def test_without_c_the_critic_cannot_beat_chance(tiny_model_dir, tokenizer, tmp_path):
    train, held_out = secret_word_episodes(tokenizer, 8), secret_word_episodes(tokenizer, 8, first=100)
    train_critic(critic_config(tiny_model_dir, tmp_path / "blind", privileged=False, epochs=1), train)
    critic = load_critic(tmp_path / "blind", torch.device("cpu"))
    assert critic.tokens(held_out[0]).input_ids == critic.tokens(held_out[3]).input_ids  # ABC-task τ+ = XYZ-task τ−
    assert held_out_accuracy(critic, held_out) == 0.5


def test_value_head_ablation_regresses_the_outcome(tiny_model_dir, tokenizer, tmp_path):
    train = secret_word_episodes(tokenizer, 4)
    summary = train_critic(critic_config(tiny_model_dir, tmp_path / "value", head="value", epochs=4,
                                         learning_rate=1e-2), train)
    log = [json.loads(line) for line in (tmp_path / "value" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["mse"] < log[0]["mse"]
    assert summary["trajectories"] == 8
    critic = load_critic(tmp_path / "value", torch.device("cpu"))
    values = critic.score_candidates(train[0].task.privileged_information, train[0].agent_turns[-1].input,
                                     ["I WANT TO ANSWER: return 'ABC'", "Any details?"])
    assert len(values) == 2 and all(0.0 < v < 1.0 for v in values)  # pulled from 0 towards the rewards


def test_an_interrupted_training_resumes_where_its_checkpoint_left_off(tmp_path):
    """Kill a run after 5 optimiser steps, resume it, and land on the uninterrupted run's weights."""
    items = [torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(12)]

    def make_model():
        torch.manual_seed(0)
        return nn.Linear(3, 1)

    def run(out, stop_after=None):
        calls = {"n": 0}

        def loss_fn(model, x):
            calls["n"] += 1
            if stop_after is not None and calls["n"] > stop_after:
                raise KeyboardInterrupt  # the process dies mid-epoch
            loss = (model(x) - x.sum()).pow(2).mean()
            return loss, {"accuracy": 0.0}, 3

        model = make_model()
        options = TrainOptions(epochs=2, gradient_accumulation_steps=2, learning_rate=0.05, save_steps=1, progress=False)
        optimise(model, items, loss_fn, options, out, accelerator=make_accelerator(), name="toy")
        return model

    reference = run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", stop_after=10)  # 10 micro-batches = 5 optimiser steps done
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())["step"] == 5
    resumed = run(tmp_path / "resumed")

    assert torch.allclose(resumed.weight, reference.weight) and torch.allclose(resumed.bias, reference.bias)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # every step logged once, none repeated


def secret_word_preferences(tokenizer, count: int, first: int = 0) -> list[dict]:
    """Turn-level pairs as people make them in the app: the answer that says c's word over the other."""
    rows = []
    for i in range(first, first + count):
        word, other = WORDS[i % 2], WORDS[1 - i % 2]
        prompt = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                {"role": "user", "content": "Write a function secret."}],
                                               tokenize=False, add_generation_prompt=True)
        rows.append({"prompt": prompt, "chosen": f"I WANT TO ANSWER: return '{word}'",
                     "rejected": f"I WANT TO ANSWER: return '{other}'", "source": "edit", "task_id": f"secret-{i}",
                     "privileged": f"def secret(): return '{word}'"})
    return rows


def test_people_s_turn_level_preferences_supervise_the_critic(tiny_model_dir, tokenizer, tmp_path):
    preferences = tmp_path / "preferences.jsonl"
    preferences.write_text("".join(json.dumps(r) + "\n" for r in secret_word_preferences(tokenizer, 8)))
    config = critic_config(tiny_model_dir, tmp_path / "critic", human_pairs=True, preferences=str(preferences))

    summary = train_critic(config, episodes=[])  # no trajectory pairs at all: the people's pairs alone

    assert summary["pairs"] == summary["human_pairs"] == 8 and summary["train_accuracy"] == 1.0
    critic = load_critic(tmp_path / "critic", torch.device("cpu"))
    for row in secret_word_preferences(tokenizer, 4, first=100):  # unseen tasks: A(o_t, a, c) follows c
        chosen, rejected = critic.score_candidates(row["privileged"], row["prompt"], [row["chosen"], row["rejected"]])
        assert chosen > rejected
        # Ranking a candidate scores the same one-turn trajectory the human pairs trained on.
        one_turn = critic.action_tokens(row["privileged"], row["prompt"], row["chosen"])
        assert critic.scores([one_turn])[0] == pytest.approx(chosen, abs=1e-5)
    preferences.write_text('{"prompt": "p", "chosen": "a"}\n')  # a broken file says where
    with pytest.raises(TaskFileError, match=r"preferences.jsonl:1: .*prompt, chosen and rejected"):
        train_critic(critic_config(tiny_model_dir, tmp_path / "again", human_pairs=True,
                                   preferences=str(preferences)), episodes=[])


FRONTEND_DEV = Path(__file__).resolve().parents[2] / "shared" / "colbench" / "frontend_dev.jsonl"


def test_the_critic_sees_a_long_frontend_reference_page_whole(tiny_model_dir, tokenizer):
    """c was cut at 1,024 tokens; a frontend reference page can be longer, and the default keeps it."""
    page = "<html><body>" + '<div class="flex p-4 text-lg">Hello, world!</div>\n' * 90 + "</body></html>"
    task = Task(id="page", kind="frontend", problem_description="A landing page.", ground_truth=page)
    episode = scripted_episode(task, ["<html><body>Hi</body></html>"], [], tokenizer, system_prompt=SYSTEM)
    c = encode(tokenizer, privileged_prefix(page))
    assert 1024 < len(c) < CriticConfig().max_privileged_tokens
    whole = dialogue_tokens(episode, tokenizer, max_length=4096)  # the defaults' max_length and cap
    assert whole.input_ids[:len(c)] == c and len(whole.input_ids) > len(c)  # c whole, then the dialogue
    cut = dialogue_tokens(episode, tokenizer, max_length=4096, max_privileged_tokens=1024)
    assert cut.input_ids[:1024] == c[:1024] and cut.input_ids[1024] != c[1024]
    short = dialogue_tokens(episode, tokenizer, max_length=512)  # c never takes more than half the sequence
    assert short.input_ids[:256] == c[:256] and 256 < len(short.input_ids) <= 512
    critic = build_critic(critic_config(tiny_model_dir, "unused"), torch.device("cpu"))
    assert critic.settings.max_privileged_tokens == CriticConfig().max_privileged_tokens == \
        CriticSettings(base="x").max_privileged_tokens  # the option reaches the saved settings


@pytest.mark.skipif(not FRONTEND_DEV.is_file(), reason="needs ColBench's frontend_dev.jsonl in ../shared/colbench")
def test_the_default_cap_covers_colbench_frontend_pages_with_the_default_tokenizer():
    from transformers import AutoTokenizer

    from simulators.llm.default_model import ensure_default_model
    from simulators.tasks import read_task_file

    default_tokenizer = AutoTokenizer.from_pretrained(ensure_default_model())
    lengths = sorted(len(encode(default_tokenizer, privileged_prefix(task.privileged_information)))
                     for task in read_task_file(str(FRONTEND_DEV)))
    cap = CriticConfig().max_privileged_tokens
    assert lengths[int(0.95 * len(lengths))] <= cap and lengths[-1] <= cap  # every page whole (1,024 cut 1%)
