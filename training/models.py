"""The model a trainer optimises: a fresh copy of the base weights with a LoRA adapter (and its
tokenizer), gradient checkpointing for long inputs only, and the module under accelerate's wrapper.
Which weights and adapter a spec names is ``simulators.llm.specs.weights_source``, the resolver
inference uses too.
"""

from __future__ import annotations

import logging

import torch

from simulators.llm.local import load_tokenizer
from simulators.llm.specs import weights_source
from training.memory import limit_heap_fragmentation
from training.options import TrainOptions

logger = logging.getLogger(__name__)


# -- the trainable policy --------------------------------------------------------------------------


def load_lora_model(spec: str, options: TrainOptions, *, device: torch.device, trainable: bool = True):
    """A fresh copy of the model behind ``spec`` with a LoRA adapter, and its tokenizer.

    ``options.max_length`` is lowered to the model's context length when it is longer.

    A registry version (base + adapter) keeps training its own adapter; any other spec gets a new
    adapter (LoRA's B = 0, so the model starts equal to its base). Loaded fresh, never from
    ``load_model``'s shared instances, which serve inference and must not grow adapters.
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    source, adapter = weights_source(spec)
    if device.type == "cpu":
        limit_heap_fragmentation()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    context = getattr(model.config, "max_position_embeddings", None)
    if context and options.max_length > context:  # a sequence past the model's context cannot be scored
        logger.info("max_length %d exceeds the model's context; using %d", options.max_length, context)
        options.max_length = context
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    else:
        targets = options.lora_target_modules
        torch.manual_seed(options.seed)
        model = get_peft_model(model, LoraConfig(
            r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            task_type="CAUSAL_LM"))
    if options.gradient_checkpointing:
        # transformers 5.x renamed gradient_checkpointing_* to activation_checkpointing_*
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        checkpoint_long_inputs(model, options.checkpoint_min_tokens)
    return model.to(device), load_tokenizer(source)


def checkpoint_long_inputs(model: torch.nn.Module, min_tokens: int) -> None:
    """Keep gradient checkpointing for inputs of at least ``min_tokens`` tokens only.

    Memory grows with the tokens of a micro-batch; a short one fits without recomputing every
    layer in the backward pass. A pre-hook on the decoder switches the layers' flag per forward.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model

    def switch(module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        tokens = ids.numel() if ids is not None else kwargs["inputs_embeds"].shape[:2].numel()
        for layer in layers:
            layer.gradient_checkpointing = tokens >= min_tokens

    causal_lm.get_decoder().register_forward_pre_hook(switch, with_kwargs=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DistributedDataParallel wrapper (what ``accelerate`` returns)."""
    return getattr(model, "module", model)
