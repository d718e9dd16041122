"""A tiny random Llama chat model built on the spot: nothing downloaded, ready in seconds.

A byte-level BPE tokenizer trained here in memory on a few sentences, a ChatML chat template, and
a random ``LlamaForCausalLM`` (2 layers of width 64 unless asked otherwise). The tests' model
(``tests/conftest.py``) and ``scripts/gpu_check.sh`` use it.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A few sentences of the text the tests talk about; the tokenizer's alphabet is their characters.
TOKENIZER_CORPUS = [
    "You are a helpful assistant. Write a Python function that adds two numbers.",
    "def add(a, b):\n    return a + b\n",
    "Can you tell me more about the inputs? The list may be empty; return 0 then.",
    "<html><body><div class=\"flex p-4 text-lg\">Hello, world!</div></body></html>",
    "I WANT TO ANSWER: def solve(x): return sorted(x, key=lambda v: -v)[:3] # 0123456789",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t",
]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # No initial byte alphabet: the vocabulary holds only the corpus' (ASCII) characters, so any
    # token a random model emits decodes to valid text and streamed deltas stay prefix-stable.
    bpe.train_from_iterator(TOKENIZER_CORPUS * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>", clean_up_tokenization_spaces=False, model_max_length=512)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer, seed: int = 0, *, hidden_size: int = 64, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        initializer_range=0.5)  # large random weights: varied (not constant) greedy text
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(path: str | Path, seed: int = 0, **sizes) -> Path:
    """A directory holding a tiny random chat model in HF format (weights, tokenizer, template)."""
    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed, **sizes).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
