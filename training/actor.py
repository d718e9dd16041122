"""The SWEET actor (paper §4.3): turn-level preferences from the critic, then DPO + NLL (Eq. 4).

1. **sample**: for every agent turn of a fraction of the trajectories (0.1, as in the reference),
   N candidates (16) from the current actor given only o_t, the exact prompt it saw
   (``Turn.input``) — all N in one batched ``generate`` call, or ``vllm`` when it is importable on
   a GPU machine;
2. **rank**: the critic scores each candidate with c in view, A(o_t, a, c);
3. **pair**: chosen from the top half, rejected from the bottom half, k pairs per turn (4);
4. **train**: DPO with β′ plus an NLL term on the chosen (0.01), LoRA on the actor.

Human feedback from the app (edits, regenerations that were liked, votes) arrives as ready-made
turn-level pairs and joins step 4 directly (``--human-pairs``). Each step writes its output
(``sampled.jsonl``, ``ranked.jsonl``, ``pairs.jsonl``) and a re-run reuses what is there.
"""

from __future__ import annotations

import importlib.util
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from simulators.domain import Episode
from simulators.jsonl import read_jsonl, write_jsonl
from simulators.llm.base import GenerationConfig
from simulators.llm.specs import weights_source
from training import sweet
from training.data import (
    DataOptions,
    TurnRecord,
    human_preference_pairs,
    prompt_completion_tokens,
    read_episodes,
    turn_records,
)
from training.logprobs import ReferenceLogprobs, TokenScorer, collate, reference_model_id, sequence_key
from training.models import load_lora_model
from training.options import TrainOptions
from training.trainer import finished_summary, make_accelerator, optimise, save_adapter, save_config

SAMPLERS = ("auto", "hf", "vllm")


@dataclass
class ActorConfig(TrainOptions, DataOptions):
    """``python -m training actor``: sample, rank with the critic, pair, and train the actor (Eq. 4)."""

    out: str = field(default="runs/actor", metadata={"help": "output directory"})
    critic: str = field(default="", metadata={"help": "directory of a trained critic (python -m training critic)"})
    pairs: str = field(default="", metadata={
        "help": "turn-level pairs JSONL (prompt/chosen/rejected) to train on directly, skipping sample/rank"})
    human_pairs: bool = field(default=True, metadata={
        "help": "also train on the app's human preference pairs (edits, liked regenerations, votes) "
                "from the session databases in --data"})
    learning_rate: float = field(default=5e-5, metadata={
        "help": "AdamW learning rate for the LoRA parameters (the reference trains all weights at 2e-7)"})
    epochs: int = field(default=1, metadata={"help": "passes over the pairs (reference: 1)"})
    data_fraction: float = field(default=0.1, metadata={
        "help": "fraction of the trajectories whose turns are resampled (reference: 0.1)"})
    best_of_n: int = field(default=16, metadata={"help": "candidates sampled per turn (reference: 16)"})
    pairs_per_turn: int = field(default=4, metadata={"help": "chosen/rejected pairs drawn per turn (reference: 4)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (reference: 1.0)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    max_new_tokens: int = field(default=512, metadata={"help": "longest candidate, in tokens"})
    sampler: str = field(default="auto", metadata={
        "help": "auto (vllm when importable and a GPU is present, else hf) | hf | vllm"})
    beta: float = field(default=0.1, metadata={"help": "β′ of the DPO loss, Eq. 4 (reference: 0.1)"})
    nll_coef: float = field(default=0.01, metadata={"help": "weight of the NLL term on chosen actions (reference: 0.01)"})


@dataclass
class TurnPairs:
    """The pairs of one prompt: its distinct completions, forwarded together, and (chosen, rejected) indices."""

    prompt: str
    completions: list[str]
    pairs: list[tuple[int, int]]


# -- 1. sample -------------------------------------------------------------------------------------


def sample_candidates(
    lm, tokenizer, records: Sequence[TurnRecord], config: ActorConfig, *, progress: bool = True,
) -> list[list[str]]:
    """``best_of_n`` candidate actions for each turn's prompt o_t from the actor ``lm`` (peft model)."""
    if resolve_sampler(config.sampler) == "vllm":
        source, adapter = weights_source(config.model)
        return sample_with_vllm(source, adapter, [r.prompt for r in records], config)
    from simulators.llm.local import LocalModel

    actor = LocalModel(lm, tokenizer, name="actor")
    candidates = []
    for i, record in enumerate(tqdm(records, desc="sampling", unit="turn", disable=not progress)):
        generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                      top_p=config.top_p, seed=config.seed + i)
        candidates.append(actor.generate_texts([record.prompt], n=config.best_of_n, config=generation)[0])
    lm.train()
    return candidates


def resolve_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if sampler == "auto":
        return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"
    return sampler


def sample_with_vllm(source: str, adapter: str | None, prompts: list[str], config: ActorConfig) -> list[list[str]]:
    """All prompts × N candidates in one vLLM ``generate`` call (GPU machines)."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=source, enable_lora=adapter is not None, max_lora_rank=max(config.lora_r, 16), seed=config.seed)
    params = SamplingParams(n=config.best_of_n, temperature=config.temperature, top_p=config.top_p,
                            max_tokens=config.max_new_tokens, seed=config.seed)
    lora = LoRARequest("actor", 1, adapter) if adapter is not None else None
    outputs = llm.generate(prompts, params, lora_request=lora)
    texts = [[o.text for o in output.outputs] for output in outputs]
    del llm
    torch.cuda.empty_cache()
    return texts


# -- 2. rank and 3. pair ---------------------------------------------------------------------------


def rank_candidates(critic, records: Sequence[TurnRecord], candidates: Sequence[list[str]], *,
                    progress: bool = True) -> list[list[float]]:
    """A(o_t, a, c) of every candidate of every turn."""
    return [critic.score_candidates(record.privileged, record.prompt, texts)
            for record, texts in tqdm(list(zip(records, candidates)), desc="ranking", unit="turn", disable=not progress)]


def ranked_pairs(candidates: Sequence[str], scores: Sequence[float], k: int, rng: random.Random) -> list[tuple[int, int]]:
    """Up to ``k`` (chosen, rejected) index pairs: chosen from the top half by score, rejected from
    the bottom half (the middle candidate of an odd N is in neither); identical texts never pair."""
    order = sorted(range(len(candidates)), key=lambda i: scores[i], reverse=True)
    half = len(order) // 2
    top, bottom = order[:half], order[len(order) - half:]
    options = [(a, b) for a in top for b in bottom if candidates[a] != candidates[b] and scores[a] > scores[b]]
    return rng.sample(options, min(k, len(options)))


# -- 4. train --------------------------------------------------------------------------------------


def group_by_prompt(rows: Sequence[dict]) -> list[TurnPairs]:
    """Turn-level pair rows ({prompt, chosen, rejected}) grouped by prompt, completions deduplicated."""
    groups: dict[str, TurnPairs] = {}
    for row in rows:
        group = groups.setdefault(row["prompt"], TurnPairs(row["prompt"], [], []))
        for text in (row["chosen"], row["rejected"]):
            if text not in group.completions:
                group.completions.append(text)
        pair = (group.completions.index(row["chosen"]), group.completions.index(row["rejected"]))
        if pair[0] != pair[1] and pair not in group.pairs:
            group.pairs.append(pair)
    return [g for g in groups.values() if g.pairs]


def train_on_pairs(scorer: TokenScorer, tokenizer, turns: Sequence[TurnPairs], config: ActorConfig, out: Path,
                   accelerator) -> dict:
    """DPO (β′) + NLL on the chosen, one forward pass per prompt over its distinct completions.

    π_ref is the actor as loaded — the base, or the parent version — so its log-probs are computed
    before the first update and cached.
    """
    pad_id = tokenizer.pad_token_id
    encoded = {}
    for turn in turns:
        for text in turn.completions:
            prompt_ids, completion_ids = prompt_completion_tokens(tokenizer, turn.prompt, text, max_length=config.max_length)
            encoded[(turn.prompt, text)] = (prompt_ids + completion_ids, [False] * len(prompt_ids) + [True] * len(completion_ids))
    keys = {pc: sequence_key(ids, target) for pc, (ids, target) in encoded.items()}
    reference = ReferenceLogprobs(out / "reference_logprobs.pt", model_id=reference_model_id(
        config.model, scorer.lm, adapter_disabled=False))
    reference.fill(scorer.lm, [(keys[pc], ids, target) for pc, (ids, target) in encoded.items()], pad_id=pad_id,
                   disable_adapter=False, progress=config.progress)
    device = next(scorer.parameters()).device

    def loss_fn(model, turn: TurnPairs):
        rows = [encoded[(turn.prompt, text)] for text in turn.completions]
        input_ids, attention_mask, target_mask = collate([r[0] for r in rows], [r[1] for r in rows], pad_id, device)
        logp = model(input_ids, attention_mask, target_mask)
        token_row = target_mask[:, 1:].nonzero()[:, 0]  # row of each scored token, row-major like ``logp``
        policy = sweet.sequence_sums(logp, token_row, len(rows))
        ref = torch.stack([reference[keys[(turn.prompt, t)]].sum() for t in turn.completions]).to(device)
        chosen, rejected = [a for a, _ in turn.pairs], [b for _, b in turn.pairs]
        chosen_rows = torch.tensor(sorted(set(chosen)), device=device)
        chosen_token_logp = logp[torch.isin(token_row, chosen_rows)]
        loss, stats = sweet.actor_loss(policy[chosen], policy[rejected], ref[chosen], ref[rejected],
                                       chosen_token_logp, config.beta, config.nll_coef)
        return loss, stats, int(attention_mask.sum())

    result = optimise(scorer, list(turns), loss_fn, config, out, accelerator=accelerator, name="actor",
                        plot_keys=("loss", "accuracy", "margin", "nll"))
    return {"steps": result.steps, "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1), **result.last}


def critic_pairs(config: ActorConfig, episodes: Sequence[Episode], lm, tokenizer, out: Path, *,
                 write: bool = True) -> list[dict]:
    """Steps 1–3, each written to ``out`` (when ``write``) and reused by a re-run.

    Under ``accelerate launch`` every process computes the same pairs (the same seeds) and only
    the main one writes: several writers of one file would race.
    """
    from training.critic import load_critic

    records = turn_records(episodes, config.data_fraction, config.seed)
    sampled_path, ranked_path, pairs_path = out / "sampled.jsonl", out / "ranked.jsonl", out / "pairs.jsonl"
    if pairs_path.is_file():
        return read_jsonl(pairs_path)
    if sampled_path.is_file():
        candidates = [row["candidates"] for row in read_jsonl(sampled_path)]
    else:
        candidates = sample_candidates(lm, tokenizer, records, config, progress=config.progress)
        if write:
            write_jsonl(sampled_path, [{"prompt": r.prompt, "task_id": r.task_id, "turn": r.turn, "candidates": c}
                                        for r, c in zip(records, candidates)])
    if not config.critic:
        raise ValueError("ranking needs a trained critic: pass --critic DIR (or --pairs FILE)")
    critic = load_critic(config.critic, device=next(lm.parameters()).device)
    scores = rank_candidates(critic, records, candidates, progress=config.progress)
    del critic
    if write:
        write_jsonl(ranked_path, [{"prompt": r.prompt, "task_id": r.task_id, "turn": r.turn, "candidates": c, "scores": s}
                                   for r, c, s in zip(records, candidates, scores)])
    rng = random.Random(config.seed)
    rows = []
    for record, texts, turn_scores in zip(records, candidates, scores):
        for a, b in ranked_pairs(texts, turn_scores, config.pairs_per_turn, rng):
            rows.append({"prompt": record.prompt, "chosen": texts[a], "rejected": texts[b], "source": "critic",
                         "task_id": record.task_id, "chosen_score": turn_scores[a], "rejected_score": turn_scores[b]})
    if write:
        write_jsonl(pairs_path, rows)
    return rows


def train_actor(config: ActorConfig, episodes: Sequence[Episode] | None = None) -> dict:
    """The whole actor step; returns a summary (the adapter is in ``<out>/adapter``)."""
    out = Path(config.out)
    if (finished := finished_summary(out, config.resume)) is not None:
        return finished
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.json")
    accelerator = make_accelerator()
    lm, tokenizer = load_lora_model(config.model, config, device=accelerator.device)
    if config.pairs:
        rows = read_jsonl(Path(config.pairs))
    else:
        episodes = list(episodes) if episodes is not None else read_episodes(config.data, config.kind)
        rows = critic_pairs(config, episodes, lm, tokenizer, out, write=accelerator.is_main_process)
    sources = defaultdict(int)
    for row in rows:
        sources[row.get("source", "file")] += 1
    if config.human_pairs:
        human = [{key: row[key] for key in ("prompt", "chosen", "rejected", "source")}
                 for row in human_preference_pairs(config.data, config.preferences)]
        rows = rows + human
        sources["human"] = len(human)
    turns = group_by_prompt(rows)
    if not turns:
        raise ValueError("no turn-level pairs to train on (every turn's candidates scored alike?)")
    lm.train()
    stats = train_on_pairs(TokenScorer(lm), tokenizer, turns, config, out, accelerator)
    summary = {"out": str(out), "adapter": str(out / "adapter"), "prompts": len(turns),
               "pairs": sum(len(t.pairs) for t in turns), "pair_sources": dict(sources), **stats}
    save_adapter(lm, tokenizer, out, summary, accelerator)
    return summary



