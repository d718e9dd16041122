"""The optimisation loop every trainer shares (accelerate, gradient accumulation, the
learning-rate schedule, resumable checkpoints, a JSONL log and PNG curves), and the files a
finished run leaves (adapter, summary, config).

The loop is written out rather than hidden in ``transformers.Trainer``: each command supplies a
``loss_fn(model, item) -> (loss, stats, tokens)`` over one micro-batch ``item``. Under
``accelerate launch`` the items are sharded across processes and gradients are synchronised on
the last micro-batch of each accumulation window only; on one CPU the same code runs as is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from simulators.jsonl import append_jsonl, read_jsonl, write_jsonl
from training.memory import release_freed_memory
from training.models import unwrap
from training.options import TrainOptions

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float], int]]

# -- the learning-rate schedule --------------------------------------------------------------------

LR_SCHEDULERS = ("cosine", "constant")


def learning_rate_at(step: int, total_steps: int, options: TrainOptions) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warmup over the first W = ⌈warmup_ratio · total_steps⌉ steps, lr · (step + 1) / (W + 1)
    (as nanoGPT: no step is wasted at lr 0), then for ``cosine`` (the reference scripts' OpenRLHF
    ``cosine_with_min_lr`` schedule, min_lr = 0.1 · lr, warmup 0.03) a half cosine from lr down
    towards min_lr_ratio · lr over the remaining steps:

        lr_s = lr · [ r + (1 − r) · ½ (1 + cos(π · (s − W) / (total − W))) ],  r = min_lr_ratio

    and for ``constant`` the peak lr throughout. A pure function of the step, so a resumed run
    continues the same schedule from its checkpoint's step.
    """
    if options.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"unknown lr_scheduler {options.lr_scheduler!r}: use one of {', '.join(LR_SCHEDULERS)}")
    if not 0 <= options.warmup_ratio < 1 or not 0 <= options.min_lr_ratio <= 1:
        raise ValueError("warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")
    peak = options.learning_rate
    warmup = math.ceil(options.warmup_ratio * total_steps)
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if options.lr_scheduler == "constant":
        return peak
    progress = (step - warmup) / max(1, total_steps - warmup)
    r = options.min_lr_ratio
    return peak * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress)))


# -- the optimisation loop -------------------------------------------------------------------------


def make_accelerator():
    from accelerate import Accelerator

    return Accelerator()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in unwrap(model).named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(unwrap(model).named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))


@dataclass
class TrainResult:
    steps: int
    epochs: int
    micro_batches: int
    tokens: int
    seconds: float
    last: dict[str, float]
    log: Path


def optimise(
    model: torch.nn.Module, items: Sequence[Any], loss_fn: LossFn, options: TrainOptions, out_dir: Path, *,
    accelerator, name: str, evaluate: Callable[[], dict[str, float]] | None = None,
    plot_keys: Sequence[str] = ("loss", "accuracy"),
) -> TrainResult:
    """Optimise ``loss_fn`` over ``items`` for ``options.epochs`` epochs with AdamW, the learning
    rate of each optimiser step set by ``learning_rate_at`` (warmup, then cosine decay).

    Writes ``log.jsonl`` (one line per optimiser step, plus evaluation lines), ``curves.png`` and
    ``checkpoint/`` (trainable weights, optimiser state, position in the data) every
    ``save_steps`` steps; with ``options.resume`` a run picks up from that checkpoint.
    """
    from training.plots import plot_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.learning_rate, weight_decay=options.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    accum = max(1, options.gradient_accumulation_steps)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_process = math.ceil(len(items) / world)
    steps_per_epoch = math.ceil(per_process / accum)
    checkpoint = out_dir / "checkpoint"
    log_path = out_dir / "log.jsonl"

    step, start_epoch, start_micro = 0, 0, 0
    if options.resume and (checkpoint / "state.json").is_file():
        state = json.loads((checkpoint / "state.json").read_text())
        load_trainable_state(model, torch.load(checkpoint / "trainable.pt"))
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt"))
        step, start_epoch, start_micro = state["step"], state["epoch"], state["micro_batch"]
        logger.info("%s: resuming at step %d (epoch %d, micro-batch %d)", name, step, start_epoch, start_micro)
    if accelerator.is_main_process:
        _truncate_log(log_path, step)

    model.train()
    tokens, started = 0, time.perf_counter()
    last: dict[str, float] = {}
    window: list[tuple[float, dict[str, float]]] = []
    total_steps = options.epochs * steps_per_epoch
    learning_rate_at(0, total_steps, options)  # a bad schedule option fails before any work
    bar = tqdm(total=total_steps, initial=step, desc=name, unit="step",
               disable=not (options.progress and accelerator.is_local_main_process))
    for epoch in range(start_epoch, options.epochs):
        order = list(range(len(items)))
        random.Random(options.seed + epoch).shuffle(order)
        order += order[: per_process * world - len(order)]  # equal shards: every process syncs equally often
        shard = order[rank::world]
        first = start_micro if epoch == start_epoch else 0
        for micro in range(first, len(shard)):
            window_end = (micro + 1) % accum == 0 or micro == len(shard) - 1
            sync = contextlib.nullcontext() if window_end else accelerator.no_sync(model)
            with sync:
                loss, stats, n_tokens = loss_fn(model, items[shard[micro]])
                accelerator.backward(loss / accum)
            tokens += n_tokens
            window.append((loss.item(), stats))
            if not window_end:
                continue
            if options.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, options.max_grad_norm)
            lr = learning_rate_at(step, total_steps, options)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            release_freed_memory()
            step += 1
            bar.update(1)
            elapsed = time.perf_counter() - started
            last = _window_means(window, accelerator)
            window = []
            record = {"step": step, "epoch": epoch, **last, "lr": lr,
                      "tokens": tokens, "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
                      "elapsed_s": round(elapsed, 2)}
            bar.set_postfix(loss=f"{last['loss']:.4f}")
            if evaluate is not None and options.eval_steps > 0 and step % options.eval_steps == 0:
                record.update(_run_eval(evaluate, accelerator))
            if accelerator.is_main_process:
                append_jsonl(log_path, record)
            if options.save_steps > 0 and step % options.save_steps == 0:
                _save_checkpoint(model, optimizer, checkpoint, step, epoch, micro + 1, accelerator)
        start_micro = 0
    bar.close()
    if evaluate is not None and (options.eval_steps <= 0 or step % options.eval_steps != 0):
        final_eval = _run_eval(evaluate, accelerator)
        if accelerator.is_main_process:
            append_jsonl(log_path, {"step": step, **final_eval})
        last.update(final_eval)
    _save_checkpoint(model, optimizer, checkpoint, step, options.epochs, 0, accelerator)
    if accelerator.is_main_process:
        plot_curves(log_path, out_dir / "curves.png", keys=plot_keys, title=name)
    accelerator.wait_for_everyone()
    return TrainResult(steps=step, epochs=options.epochs, micro_batches=len(items), tokens=tokens,
                       seconds=time.perf_counter() - started, last=last, log=log_path)


def _window_means(window: list[tuple[float, dict[str, float]]], accelerator) -> dict[str, float]:
    """Loss and stats of one optimiser step, averaged over its micro-batches in every process (the
    processes' windows are equally long: equal shards), not over the main process's share alone."""
    means = {"loss": sum(loss for loss, _ in window) / len(window)}
    for key in window[0][1]:
        means[key] = sum(stats[key] for _, stats in window) / len(window)
    if accelerator.num_processes > 1:
        local = torch.tensor(list(means.values()), dtype=torch.float64, device=accelerator.device)
        means = dict(zip(means, accelerator.reduce(local, reduction="mean").tolist()))
    return {k: round(v, 6) for k, v in means.items()}


def _run_eval(evaluate: Callable[[], dict[str, float]], accelerator) -> dict[str, float]:
    results = evaluate() if accelerator.is_main_process else {}
    accelerator.wait_for_everyone()
    return {f"eval_{k}": round(v, 6) for k, v in results.items()}


def _truncate_log(path: Path, step: int) -> None:
    """Keep log lines up to ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    write_jsonl(path, [row for row in read_jsonl(path) if row.get("step", 0) <= step])


def _save_checkpoint(model, optimizer, checkpoint: Path, step: int, epoch: int, micro: int, accelerator) -> None:
    """Trainable weights + optimiser state + position, written to a temporary directory and renamed."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        partial = checkpoint.with_name(checkpoint.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        torch.save(trainable_state(model), partial / "trainable.pt")
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        (partial / "state.json").write_text(json.dumps({"step": step, "epoch": epoch, "micro_batch": micro}))
        old = checkpoint.with_name(checkpoint.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if checkpoint.exists():
            checkpoint.rename(old)
        partial.rename(checkpoint)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# -- a run's files ---------------------------------------------------------------------------------


def finished_summary(out: Path, resume: bool) -> dict | None:
    """The summary of a run already finished in ``out`` (adapter saved), which a resumed run reuses."""
    if resume and (out / "adapter" / "adapter_config.json").is_file() and (out / "summary.json").is_file():
        return {**json.loads((out / "summary.json").read_text()), "reused": True}
    return None


def save_adapter(lm, tokenizer, out: Path, summary: dict, accelerator) -> None:
    """The trained adapter (+ tokenizer) in ``out/adapter`` and ``summary.json``, from the main process."""
    if accelerator.is_main_process:
        lm.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()


def save_config(config: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(config), indent=2))
