"""Benchmark SWEET training on the default model (SmolLM2-135M-Instruct), CPU (issue 6).

Three measurements, each in its own subprocess (clean peak RSS, no shared caches):

* critic -- critic training throughput, ours vs TRL's ``DPOTrainer``, same model, same LoRA
  (r=16, alpha=32, all linear layers), same pairs, one epoch. The data: real ColBench backend
  tasks (``--tasks``), three scripted trajectories each (one success, two failures: the
  reference scripts' ``--k 3``), paired as ``evaluate_code.py`` does (success over each failure:
  two pairs per task). Each trajectory is c (the reference solution) followed by the dialogue in
  the chat template. TRL gets the same text as prompt/chosen/rejected rows: prompt = c and the
  dialogue up to the first agent turn (shared by both), chosen/rejected = the rest of each
  trajectory. Throughput = pair tokens (Σ over pairs of the tokens of both trajectories, the
  same number for both trainers) per second of wall time, model loading and reference
  log-probs included. TRL is run with its defaults (π_ref recomputed each step with the adapter
  disabled) and with ``precompute_ref_log_probs=True``.
* sampling -- best-of-16 candidates per second: one ``generate`` call with n=16 (what the actor
  uses) vs sixteen sequential ``generate`` calls with n=1, same prompt (a real agent prompt o_t)
  and settings (temperature 1.0, 64 new tokens).
* memory -- peak RSS (``resource.getrusage``) of critic LoRA training with the default config on
  long dialogues: nine rounds in which the agent shows a draft of the function each time, so one
  micro-batch (a task's three trajectories) holds close to ``--max-group-tokens`` (8,192) tokens.

Run from the repository root (two cores shared with other work: the runs alternate, medians are
reported)::

    .venv/bin/python bench/bench_training.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_TASKS = Path(__file__).resolve().parents[2] / "shared" / "colbench" / "backend_dev.jsonl"  # ../shared
ASK = ("Before I write it: what should happen with empty or invalid input, and do you need any rounding "
       "or a particular order in the result?")
REPLY = "Empty input gives an empty result; keep the order of the input, no rounding."


def benchmark_episodes(tasks_path: Path, count: int, rounds: int = 1, drafts: bool = False):
    """Three trajectories per task: a success after ``rounds`` questions, and two failures.
    ``drafts``: every question comes with a draft of the function and the tasks with the longest
    references are used (long turns, dialogues that fill ``max_length``)."""
    from simulators.llm.default_model import ensure_default_model
    from simulators.llm.local import load_tokenizer
    from simulators.tasks import load_tasks
    from training.synthetic import scripted_episode

    tokenizer = load_tokenizer(str(ensure_default_model()))
    tasks = sorted(load_tasks(tasks_path).items, key=lambda t: (len(t.ground_truth), t.id))
    # Short-to-median references (realistic, CPU-sized), or the longest ones for the memory bound.
    tasks = tasks[-count:] if drafts else tasks[len(tasks) // 4:][:count]
    episodes = []
    for task in tasks:
        signature = task.ground_truth.split("\n", 1)[0]
        wrong = f"{signature}\n    return None"
        draft = f"Here is my draft so far:\n```python\n{task.ground_truth}\n```\n" if drafts else ""
        questions, replies = [draft + ASK] * rounds, [REPLY] * rounds
        scripts = [(questions + [f"I WANT TO ANSWER:\n```python\n{task.ground_truth}\n```"], replies, 1.0),
                   ([f"I WANT TO ANSWER:\n```python\n{wrong}\n```"], [], 0.0),
                   (questions + [f"I WANT TO ANSWER:\n```python\n{signature}\n    pass\n```"], replies, 0.3)]
        for sample, (agent, human, reward) in enumerate(scripts):
            episodes.append(scripted_episode(task, agent, human, tokenizer, reward=reward,
                                             scores={"success": reward == 1.0}, sample=sample))
    return episodes, tokenizer


def pair_tokens(episodes, tokenizer) -> tuple[int, int, int]:
    """(pairs, Σ tokens of both trajectories over the pairs, tokens of the distinct trajectories)."""
    from training.data import dialogue_tokens, trajectory_pairs

    pairs = trajectory_pairs(episodes)
    lengths = {i: len(dialogue_tokens(episodes[i], tokenizer).input_ids) for p in pairs for i in p}
    return len(pairs), sum(lengths[a] + lengths[b] for a, b in pairs), sum(lengths.values())


def trl_rows(episodes, tokenizer) -> list[dict]:
    """The same pairs as TRL preference rows: a shared prompt (c + the dialogue up to the first
    agent turn), then each trajectory's remaining dialogue as chosen / rejected."""
    from training.data import agent_turn_prompts, privileged_prefix, trajectory_pairs

    rows = []
    for chosen, rejected in trajectory_pairs(episodes):
        texts = []
        for i in (chosen, rejected):
            prompts = agent_turn_prompts(episodes[i], tokenizer)
            last = episodes[i].agent_turns[-1]
            texts.append((prompts[0], prompts[-1] + last.content))
        prompt = privileged_prefix(episodes[chosen].task.privileged_information) + texts[0][0]
        assert texts[0][0] == texts[1][0]  # both trajectories open the same way
        rows.append({"prompt": prompt, "chosen": texts[0][1][len(texts[0][0]):],
                     "rejected": texts[1][1][len(texts[1][0]):]})
    return rows


# -- workers (one per subprocess) -------------------------------------------------------------------


def worker_critic_ours(args) -> dict:
    from training.critic import CriticConfig, train_critic

    episodes, tokenizer = benchmark_episodes(args.tasks, args.count)
    pairs, tokens, distinct = pair_tokens(episodes, tokenizer)
    with tempfile.TemporaryDirectory() as out:
        # checkpoint_min_tokens=0: checkpointing on means on for every micro-batch, as for TRL (our
        # default, 2048, leaves these ~1,400-token groups unchecked: the --no-checkpointing figures)
        config = CriticConfig(model="default", out=out, epochs=1, gradient_accumulation_steps=1, eval_fraction=0.0,
                              save_steps=0, progress=False, gradient_checkpointing=args.checkpointing,
                              checkpoint_min_tokens=0)
        started = time.perf_counter()
        summary = train_critic(config, episodes)
        seconds = time.perf_counter() - started
    return {"trainer": "ours", "gradient_checkpointing": args.checkpointing, "pairs": pairs, "pair_tokens": tokens, "distinct_tokens": distinct,
            "seconds": round(seconds, 2), "pair_tokens_per_s": round(tokens / seconds, 1),
            "optimizer_steps": summary["steps"], "peak_rss_gb": peak_rss_gb()}


def worker_critic_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    try:
        from trl import DPOConfig, DPOTrainer
    except ImportError as exc:
        raise SystemExit("the TRL comparison needs TRL: .venv/bin/pip install -e '.[bench]'") from exc

    from simulators.llm.default_model import ensure_default_model

    episodes, tokenizer = benchmark_episodes(args.tasks, args.count)
    pairs, tokens, distinct = pair_tokens(episodes, tokenizer)
    rows = trl_rows(episodes, tokenizer)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=torch.float32)
        config = DPOConfig(output_dir=out, per_device_train_batch_size=1, gradient_accumulation_steps=1,
                           num_train_epochs=1, learning_rate=1e-4, beta=0.1, max_length=None, report_to=[],
                           save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True,
                           bf16=False,  # TRL defaults to bf16 autocast, ~10x slower on CPUs without bf16 units
                           precompute_ref_log_probs=args.precompute, dataloader_num_workers=0,
                           gradient_checkpointing=args.checkpointing,
                           gradient_checkpointing_kwargs={"use_reentrant": False})
        trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"))
        trainer.train()
        seconds = time.perf_counter() - started
    name = "trl-precompute-ref" if args.precompute else "trl"
    return {"trainer": name, "gradient_checkpointing": args.checkpointing, "pairs": pairs, "pair_tokens": tokens, "distinct_tokens": distinct,
            "seconds": round(seconds, 2), "pair_tokens_per_s": round(tokens / seconds, 1),
            "optimizer_steps": trainer.state.global_step, "peak_rss_gb": peak_rss_gb()}


def worker_sampling(args) -> dict:
    from simulators.llm import GenerationConfig, load_model
    from simulators.prompts import agent_messages
    from simulators.rollout import new_episode
    from simulators.tasks import load_tasks

    model = load_model("default")
    task = load_tasks(args.tasks).items[0]
    prompt = model.format_prompt(agent_messages(new_episode(task, human="bench", agent_model="default")))
    config = GenerationConfig(max_new_tokens=64, temperature=1.0, seed=0)
    model.generate_texts([prompt], n=2, config=GenerationConfig(max_new_tokens=4, temperature=1.0, seed=0))  # warm-up
    results = {}
    for mode in args.modes.split(","):
        started = time.perf_counter()
        if mode == "batched":
            texts = model.generate_texts([prompt], n=16, config=config)[0]
        else:
            texts = [model.generate_texts([prompt], n=1, config=GenerationConfig(
                max_new_tokens=64, temperature=1.0, seed=k))[0][0] for k in range(16)]
        seconds = time.perf_counter() - started
        new_tokens = sum(len(model.encode(t)) for t in texts)
        results[mode] = {"seconds": round(seconds, 2), "candidates_per_s": round(16 / seconds, 3),
                         "generated_tokens": new_tokens, "tokens_per_s": round(new_tokens / seconds, 1)}
    return {"prompt_tokens": len(model.encode(prompt)), **results}


def worker_memory(args) -> dict:
    from training.critic import CriticConfig, train_critic
    from training.data import dialogue_tokens

    episodes, tokenizer = benchmark_episodes(args.tasks, 1, rounds=9, drafts=True)
    pairs, tokens, distinct = pair_tokens(episodes, tokenizer)
    with tempfile.TemporaryDirectory() as out:
        config = CriticConfig(model="default", out=out, epochs=1, eval_fraction=0.0, save_steps=0, progress=False)
        started = time.perf_counter()
        train_critic(config, episodes)
        seconds = time.perf_counter() - started
    lengths = sorted(len(critic_tokens.input_ids) for critic_tokens in
                     (dialogue_tokens(e, tokenizer, max_length=config.max_length) for e in episodes))
    return {"trajectories": len(episodes), "tokens_per_trajectory": lengths, "pairs": pairs, "distinct_tokens": distinct,
            "max_length": config.max_length, "max_group_tokens": config.max_group_tokens,
            "gradient_checkpointing": config.gradient_checkpointing, "seconds": round(seconds, 1),
            "peak_rss_gb": peak_rss_gb()}


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)  # ru_maxrss is in KiB


WORKERS = {"critic-ours": worker_critic_ours, "critic-trl": worker_critic_trl, "sampling": worker_sampling,
           "memory": worker_memory}


# -- driver ----------------------------------------------------------------------------------------


def run_worker(name: str, args, *extra: str) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--tasks", str(args.tasks), "--count", str(args.count), *extra]
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=Path, default=DEFAULT_TASKS, help="ColBench backend task file")
    parser.add_argument("--count", type=int, default=3, help="tasks in the critic benchmark (3 trajectories each)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating repetitions of the critic benchmark")
    parser.add_argument("--parts", default="critic,sampling,memory", help="which measurements to run")
    parser.add_argument("--out", type=Path, default=None, help="also write the results JSON here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--precompute", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    parser.add_argument("--modes", default="batched,sequential", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    results: dict = {"machine": machine()}
    parts = args.parts.split(",")
    if "critic" in parts:
        # Gradient checkpointing on (our default, needed for long dialogues) and off, for both trainers.
        variants = {"ours": ("critic-ours",), "trl": ("critic-trl",), "trl-precompute-ref": ("critic-trl", "--precompute")}
        results["critic"] = {}
        for checkpointing in ("--checkpointing", "--no-checkpointing"):
            runs: dict[str, list[dict]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, (worker, *flags) in variants.items():
                    runs[name].append(run_worker(worker, args, *flags, checkpointing))
            medians = {name: statistics.median(r["pair_tokens_per_s"] for r in rs) for name, rs in runs.items()}
            results["critic"][checkpointing.lstrip("-")] = {
                "runs": runs, "median_pair_tokens_per_s": medians,
                "speedup_vs_trl": round(medians["ours"] / medians["trl"], 2),
                "speedup_vs_trl_precompute": round(medians["ours"] / medians["trl-precompute-ref"], 2)}
    if "sampling" in parts:
        sampling = run_worker("sampling", args)
        sampling["speedup"] = round(sampling["batched"]["candidates_per_s"] / sampling["sequential"]["candidates_per_s"], 2)
        results["sampling"] = sampling
    if "memory" in parts:
        results["memory"] = run_worker("memory", args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def machine() -> dict:
    import os
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "platform": platform.platform(), "load_average": os.getloadavg()}


if __name__ == "__main__":
    main()
