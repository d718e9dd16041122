"""Trains the critic, the actor, RFT and multi-turn DPO on the tiny model, as one process of an
``accelerate launch`` (or alone), for tests/test_accelerate.py.

    python tests/accelerate_worker.py MODEL_DIR OUT GRADIENT_ACCUMULATION_STEPS

The trainers run unchanged; two real functions are wrapped to watch them: each trainer's
``optimise`` (which items this process trains on, and its trainable weights afterwards) and
``torch.save`` (which files this process writes). ``OUT/record-<rank>.json`` holds what was seen.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from simulators.domain import Task
from simulators.llm.local import load_tokenizer
from training import actor, baselines, critic, trainer
from training.synthetic import scripted_episode

SYSTEM = "You are a helpful assistant."
WORDS = ("add", "solve")
CHOSEN, REJECTED = "def add(a, b):\n    return a + b", ["Can you tell me more about the inputs?", "return 0"]


def episodes(tokenizer, tasks: int = 4):
    """Per task, a successful and a failed dialogue: 4 tasks give 4 trajectory pairs, 4 RFT sequences."""
    made = []
    for i in range(tasks):
        word, other = WORDS[i % 2], WORDS[1 - i % 2]
        task = Task(id=f"task-{i}", kind="backend", problem_description=f"Write a function number {i}.",
                    ground_truth=f"def {word}(): return {i}", test_cases={"test1": f"{word}()"})
        for sample, (said, reward) in enumerate([(word, 1.0), (other, 0.0)]):
            made.append(scripted_episode(task, ["Any details?", f"I WANT TO ANSWER: def {said}(): return {i}"],
                                         ["Yes."], tokenizer, reward=reward, scores={"success": reward == 1.0},
                                         sample=sample, system_prompt=SYSTEM))
    return made


def main(model_dir: str, out: str, accumulation: int) -> None:
    out_dir = Path(out)
    record: dict = {"items": {}, "item_count": {}, "saves": []}
    real_optimise, real_save = trainer.optimise, torch.save

    def watched_optimise(model, items, loss_fn, options, run_dir, *, accelerator, name, **kwargs):
        index = {id(item): i for i, item in enumerate(items)}
        seen = record["items"].setdefault(name, [])

        def loss(m, item):
            seen.append(index[id(item)])
            return loss_fn(m, item)

        result = real_optimise(model, items, loss, options, run_dir, accelerator=accelerator, name=name, **kwargs)
        record["rank"], record["world"] = accelerator.process_index, accelerator.num_processes
        record["item_count"][name] = len(items)
        real_save(trainer.trainable_state(model), out_dir / f"weights-{name}-{accelerator.process_index}.pt")
        return result

    def watched_save(obj, f, *args, **kwargs):
        record["saves"].append(str(f))
        return real_save(obj, f, *args, **kwargs)

    for module in (critic, actor, baselines):
        module.optimise = watched_optimise
    torch.save = watched_save

    tokenizer = load_tokenizer(model_dir)
    data = episodes(tokenizer)
    pairs = out_dir / "pairs.jsonl"  # 4 prompts (the last agent turns' inputs), 2 pairs each
    pairs.parent.mkdir(parents=True, exist_ok=True)
    pairs.write_text("".join(json.dumps({"prompt": e.agent_turns[-1].input, "chosen": CHOSEN, "rejected": rejected}) + "\n"
                             for e in data[::2] for rejected in REJECTED))
    common = dict(model=model_dir, epochs=2, gradient_accumulation_steps=accumulation, learning_rate=1e-3, lora_r=8,
                  lora_alpha=16, max_length=512, save_steps=1, progress=False)
    critic.train_critic(critic.CriticConfig(out=str(out_dir / "critic"), eval_fraction=0.0, **common), data)
    actor.train_actor(actor.ActorConfig(out=str(out_dir / "actor"), pairs=str(pairs), human_pairs=False, **common))
    baselines.train_rft(baselines.RFTConfig(out=str(out_dir / "rft"), **common), data)
    baselines.train_mtdpo(baselines.MTDPOConfig(out=str(out_dir / "mtdpo"), **common), data)
    (out_dir / f"record-{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
