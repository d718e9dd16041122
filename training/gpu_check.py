"""``python -m training.gpu_check`` (``scripts/gpu_check.sh``): does our training code run on this
machine's accelerator? Nothing is downloaded: a tiny random chat model is built on the spot.

It runs, on CUDA when there is a device (else on CPU, the CUDA-only parts skipped and named in
``skipped``):

* one critic step (``train_critic``: reference log-probs, the advantage loss, an optimiser step);
* one actor step (``train_actor``): batched best-of-N sampling, ranking by that critic, DPO + NLL;
* the log-prob engine: ``masked_token_logprobs`` forward + backward (tokens/s), and the shared-prefix
  path (``shared_prefix_logprobs``) against it;
* CUDA only: the same log-probs of an fp32 model under bf16 autocast, against fp32.

and prints one JSON line (tokens/s, seconds, peak GPU memory). The exit status is 1 when a check's
numbers disagree beyond tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from simulators.jsonl import read_jsonl

SYSTEM = "You are a helpful assistant."
WORDS = ("add", "solve")
# fp32 log-probs agree to rounding; bf16 keeps 8 bits of mantissa: its log-probs may differ by ~1e-1.
SHARED_PREFIX_TOLERANCE = 1e-3
BF16_TOLERANCE = 0.25


def episodes(tokenizer, tasks: int = 4):
    """Per task, a successful and a failed two-turn dialogue (the critic needs pairs)."""
    from simulators.domain import Task
    from training.synthetic import scripted_episode

    made = []
    for i in range(tasks):
        word, other = WORDS[i % 2], WORDS[1 - i % 2]
        task = Task(id=f"check-{i}", kind="backend", problem_description="Write a Python function.",
                    ground_truth=f"def {word}(a, b): return a + b", test_cases={"test1": f"{word}(1, 2)"})
        for sample, (said, reward) in enumerate([(word, 1.0), (other, 0.0)]):
            made.append(scripted_episode(
                task, ["Can you tell me more about the inputs?", f"I WANT TO ANSWER: def {said}(a, b): return a + b"],
                ["Two numbers."], tokenizer, reward=reward, scores={"success": reward == 1.0}, sample=sample,
                system_prompt=SYSTEM))
    return made


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def check_logprob_engine(model_dir: Path, device, tokenizer) -> dict:
    """Forward + backward of ``masked_token_logprobs`` on a batch (tokens/s), and the shared-prefix
    path (no gradients) against the plain one."""
    import torch

    from training.logprobs import (
        SHARED_PREFIX_MIN_TOKENS,
        collate,
        masked_token_logprobs,
        shared_prefix_logprobs,
    )
    from training.models import load_lora_model
    from training.options import TrainOptions

    lm, _ = load_lora_model(str(model_dir), TrainOptions(lora_r=8, max_length=512, gradient_checkpointing=False),
                            device=device)
    from training.tiny_model import TOKENIZER_CORPUS

    # An opening long enough for the shared-prefix path (it runs from SHARED_PREFIX_MIN_TOKENS on).
    opening = tokenizer.apply_chat_template([{"role": "system", "content": " ".join(TOKENIZER_CORPUS)},
                                             {"role": "user", "content": "Write a Python function that adds two numbers."}],
                                            tokenize=False, add_generation_prompt=True)
    endings = ["def add(a, b):\n    return a + b", "Can you tell me more about the inputs?",
               "I WANT TO ANSWER: def solve(x): return sorted(x)", "The list may be empty; return 0 then."]
    prompt_ids = tokenizer(opening, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) < SHARED_PREFIX_MIN_TOKENS:
        raise RuntimeError(f"the check's opening has {len(prompt_ids)} tokens, too few for the shared-prefix path")
    sequences = [prompt_ids + tokenizer(e, add_special_tokens=False)["input_ids"] for e in endings]
    targets = [[i >= len(prompt_ids) for i in range(len(s))] for s in sequences]
    copies = 8 if device.type == "cuda" else 1  # enough rows to time a GPU; a CPU needs none to prove it runs
    batch = collate(sequences * copies, targets * copies, tokenizer.pad_token_id, device)

    def step():
        logp = masked_token_logprobs(lm, *batch)
        logp.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return logp

    step()  # warm-up (kernels, allocator)
    lm.zero_grad(set_to_none=True)
    logp, seconds = timed(step)
    lm.eval()
    with torch.no_grad():
        plain = masked_token_logprobs(lm, *collate(sequences, targets, tokenizer.pad_token_id, device))
        shared = torch.cat(shared_prefix_logprobs(lm, sequences, targets, tokenizer.pad_token_id, device))
    tokens = int(batch[1].sum())
    return {"tokens": tokens, "seconds": round(seconds, 4), "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
            "shared_prefix_tokens": len(prompt_ids),
            "shared_prefix_max_abs_diff": float((plain - shared).abs().max()),
            "dtype": str(next(lm.parameters()).dtype)}


def check_bf16_autocast(model_dir: Path, device, tokenizer) -> dict:
    """Log-probs of an fp32 copy of the model under bf16 autocast, against fp32, and a backward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    from training.logprobs import collate, masked_token_logprobs

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Write a Python function that adds two numbers."},
                                          {"role": "assistant", "content": "def add(a, b):\n    return a + b"}],
                                         tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    batch = collate([ids] * 8, [[True] * len(ids)] * 8, tokenizer.pad_token_id, device)
    with torch.no_grad():
        reference = masked_token_logprobs(lm, *batch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        (logp, seconds) = timed(lambda: masked_token_logprobs(lm, *batch))
        logp.sum().backward()
    torch.cuda.synchronize()
    grads_finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in lm.parameters())
    return {"max_abs_diff_vs_fp32": float((logp.float() - reference).abs().max()), "grads_finite": grads_finite,
            "seconds": round(seconds, 4)}


def run(work: Path, hidden_size: int, layers: int) -> dict:
    import torch

    from simulators.llm.local import load_tokenizer
    from training.actor import ActorConfig, train_actor
    from training.critic import CriticConfig, train_critic
    from training.tiny_model import save_tiny_model

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    report: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "cuda": cuda,
                    "torch": torch.__version__, "model": {"hidden_size": hidden_size, "layers": layers},
                    "skipped": []}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        report["skipped"] += ["bf16 autocast: no CUDA device (torch.cuda.is_available() is False)",
                              "peak GPU memory: no CUDA device"]
    model_dir = save_tiny_model(work / "model", hidden_size=hidden_size, layers=layers)
    tokenizer = load_tokenizer(str(model_dir))
    data = episodes(tokenizer, tasks=2)
    common = dict(model=str(model_dir), epochs=1, learning_rate=5e-3, lora_r=8, lora_alpha=16, max_length=512,
                  human_pairs=False, progress=False)

    # One optimiser step each: every micro-batch in one accumulation window.
    critic, seconds = timed(lambda: train_critic(CriticConfig(
        out=str(work / "critic"), eval_fraction=0.0, gradient_accumulation_steps=64, **common), data))
    report["critic"] = {"steps": critic["steps"], "tokens_per_s": critic["tokens_per_s"], "seconds": round(seconds, 2)}

    actor, seconds = timed(lambda: train_actor(ActorConfig(
        out=str(work / "actor"), critic=str(work / "critic"), data_fraction=1.0, best_of_n=4, pairs_per_turn=2,
        max_new_tokens=16, sampler="hf", gradient_accumulation_steps=64, **common), data))
    sampled = read_jsonl(work / "actor" / "sampled.jsonl")
    report["actor"] = {"steps": actor["steps"], "tokens_per_s": actor["tokens_per_s"], "seconds": round(seconds, 2),
                       "sampled_turns": len(sampled), "candidates_per_turn": len(sampled[0]["candidates"]),
                       "pairs": actor["pairs"]}

    report["logprob_engine"] = check_logprob_engine(model_dir, device, tokenizer)
    engine = report["logprob_engine"]
    tolerance = SHARED_PREFIX_TOLERANCE if engine["dtype"] == "torch.float32" else BF16_TOLERANCE  # bf16 on CUDA
    checks = {"logprob_engine": engine["shared_prefix_max_abs_diff"] <= tolerance,
              "critic_step": critic["steps"] == 1, "actor_step": actor["steps"] == 1}
    if cuda:
        report["bf16_autocast"] = check_bf16_autocast(model_dir, device, tokenizer)
        checks["bf16_autocast"] = (report["bf16_autocast"]["max_abs_diff_vs_fp32"] <= BF16_TOLERANCE
                                   and report["bf16_autocast"]["grads_finite"])
        report["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    report["checks"] = checks
    report["ok"] = all(checks.values())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--hidden-size", type=int, default=64, help="width of the random model (default: 64)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the random model (default: 2)")
    parser.add_argument("--keep", default="", metavar="DIR",
                        help="work in DIR and keep it (model, critic, actor outputs); default: a temporary directory")
    args = parser.parse_args(argv)
    if args.keep:
        report = run(Path(args.keep), args.hidden_size, args.layers)
    else:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
            report = run(Path(work), args.hidden_size, args.layers)
    for reason in report["skipped"]:
        print(f"gpu_check: skipped {reason}", file=sys.stderr)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
