"""The baselines on the same data interface: rejection fine-tuning and multi-turn DPO, and the loop
running one of them in place of SWEET's critic and actor."""

from __future__ import annotations

import json
import math

import pytest
import torch

from simulators.domain import Task
from simulators.llm import load_model
from simulators.llm.registry import ModelRegistry
from simulators.trajectories import write_episodes
from training.baselines import MTDPOConfig, RFTConfig, train_mtdpo, train_rft
from training.iteration import IterationConfig, run_iteration
from training.synthetic import scripted_episode

SYSTEM = "You are a helpful assistant."
TASK = Task(id="add", kind="backend", problem_description="Write a Python function that adds two numbers.",
            ground_truth="def add(a, b):\n    return a + b", test_cases={"test1": "add(1, 2)"})
GOOD = ["Can you tell me more about the inputs?", "I WANT TO ANSWER: def add(a, b):\n    return a + b"]
BAD = ["I WANT TO ANSWER: def add(a, b): return 0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def episodes(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return [scripted_episode(TASK, GOOD, ["Integers."], tokenizer, reward=1.0, scores={"success": True}, sample=0,
                             system_prompt=SYSTEM),
            scripted_episode(TASK, BAD, [], tokenizer, reward=0.0, scores={"success": False}, sample=1,
                             system_prompt=SYSTEM)]


def options(tiny_model_dir, out, **extra):
    return dict(model=str(tiny_model_dir), out=str(out), gradient_accumulation_steps=1, learning_rate=5e-3,
                lora_r=8, lora_alpha=16, max_length=512, progress=False, **extra)


def log_of(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_rft_learns_the_agent_turns_of_the_best_trajectory(tiny_model_dir, episodes, tmp_path):
    summary = train_rft(RFTConfig(**options(tiny_model_dir, tmp_path / "rft", epochs=16)), episodes)
    assert summary["trajectories"] == 1  # only the successful one
    log = log_of(tmp_path / "rft")
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    tuned, base = load_model(str(tiny_model_dir), adapter=summary["adapter"]), load_model(str(tiny_model_dir))
    prompt = episodes[0].agent_turns[-1].input
    assert sum(tuned.completion_logprobs(prompt, GOOD[-1])) > sum(base.completion_logprobs(prompt, GOOD[-1])) + 10
    # ... and it learnt to stop there: the end-of-turn token after each message is trained too.
    for turn in episodes[0].agent_turns:
        stop_tuned = tuned.completion_logprobs(turn.input, turn.content + "<|im_end|>")[-1]
        stop_base = base.completion_logprobs(turn.input, turn.content + "<|im_end|>")[-1]
        assert stop_tuned > max(stop_base + 2.0, math.log(0.5))


def test_multi_turn_dpo_raises_the_trajectory_margin(tiny_model_dir, episodes, tmp_path):
    summary = train_mtdpo(MTDPOConfig(**options(tiny_model_dir, tmp_path / "mtdpo", epochs=8)), episodes)
    log = log_of(tmp_path / "mtdpo")
    assert summary["pairs"] == 1 and log[0]["margin"] == pytest.approx(0.0, abs=1e-6)
    assert log[-1]["margin"] > 1.0 and log[-1]["accuracy"] == 1.0
    # π_ref's log-probs are kept in --out under the name of the model that computed them.
    cache = torch.load(tmp_path / "mtdpo" / "reference_logprobs.pt")
    assert cache["model"].startswith(str(tiny_model_dir.resolve())) and len(cache["logprobs"]) == 2
    # Re-running reuses the finished run instead of training again.
    assert train_mtdpo(MTDPOConfig(**options(tiny_model_dir, tmp_path / "mtdpo", epochs=8)), episodes)["reused"]


def test_the_loop_can_train_a_baseline_instead_of_sweet(tiny_model_dir, episodes, tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_HOME", str(tmp_path / "home"))
    write_episodes(episodes, tmp_path / "data.jsonl")
    result = run_iteration(IterationConfig(data=str(tmp_path / "data.jsonl"), out=str(tmp_path / "run"), algorithm="rft",
                                 base=str(tiny_model_dir), actor_epochs=2, actor_learning_rate=5e-3,
                                 gradient_accumulation_steps=1, lora_r=4, max_length=512, eval_limit=1,
                                 eval_max_rounds=1, eval_max_new_tokens=8, simulator=str(tiny_model_dir),
                                 progress=False))
    version = ModelRegistry().get(result["version"])
    assert version.meta["algorithm"] == "rft" and not (tmp_path / "run" / "critic").exists()
    assert (tmp_path / "run" / "eval_parent.jsonl").is_file() and (tmp_path / "run" / "eval_new.jsonl").is_file()
    with pytest.raises(ValueError, match="unknown algorithm"):
        run_iteration(IterationConfig(data=str(tmp_path / "data.jsonl"), out=str(tmp_path / "x"), algorithm="ppo"))
