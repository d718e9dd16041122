"""``TrainOptions``: the settings every trainer's config inherits (optimiser, learning-rate
schedule, LoRA, sequence length, gradient checkpointing, checkpoints, seed)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainOptions:
    """Optimisation and LoRA settings shared by every trainer (each command overrides defaults)."""

    model: str = field(default="default", metadata={
        "help": "base model: 'default', a local HF directory or hub id, or registry:VERSION"})
    out: str = field(default="runs/train", metadata={"help": "output directory (adapter, checkpoint, log, curves)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (LoRA parameters)"})
    lr_scheduler: str = field(default="cosine", metadata={
        "help": "cosine (linear warmup, then cosine decay to --min-lr-ratio x the peak, as the reference "
                "scripts' OpenRLHF trainers) | constant (linear warmup, then the peak)"})
    warmup_ratio: float = field(default=0.03, metadata={
        "help": "fraction of the optimiser steps that warm the learning rate up linearly (reference: 0.03)"})
    min_lr_ratio: float = field(default=0.1, metadata={
        "help": "cosine: the learning rate it decays to, as a fraction of --learning-rate (reference: 0.1)"})
    epochs: int = field(default=1, metadata={"help": "passes over the training data"})
    gradient_accumulation_steps: int = field(default=8, metadata={
        "help": "micro-batches per optimiser step (the reference scripts: batch 8 of micro-batch 1)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "LoRA dropout (0 keeps π_θ = π_ref exactly at the start, and saves a copy of every adapted input)"})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "modules that get LoRA: 'all-linear' or a comma-separated list of names"})
    max_length: int = field(default=4096, metadata={"help": "longest training sequence, in tokens"})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "recompute each layer's activations in the backward pass: memory per token falls ~10x "
                "for ~30-50%% more compute (see --checkpoint-min-tokens)"})
    checkpoint_min_tokens: int = field(default=2048, metadata={
        "help": "with --gradient-checkpointing, only micro-batches of at least this many tokens (padding "
                "included) recompute; shorter ones fit in memory anyway and run faster (0 = every one)"})
    save_steps: int = field(default=50, metadata={"help": "write a resumable checkpoint every N optimiser steps"})
    eval_steps: int = field(default=25, metadata={"help": "evaluate every N optimiser steps (and at the end)"})
    resume: bool = field(default=True, metadata={"help": "continue from the checkpoint in --out when there is one"})
    seed: int = field(default=0, metadata={"help": "seed for data order, LoRA init and sampling"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
