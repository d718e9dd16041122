"""LocalModel on the tiny random Llama: log-probs, determinism, batching, streaming, cancel, LoRA."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

from simulators.llm import GenerationConfig, ModelError, load_model
from simulators.llm.local import LocalModel

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a Python function that adds two numbers."},
]
OTHER_MESSAGES = [{"role": "user", "content": "Can you tell me more about the inputs?"}]
GREEDY = GenerationConfig(max_new_tokens=24)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> LocalModel:
    return LocalModel(tiny_model_dir)


def test_format_prompt_applies_the_chat_template(tiny):
    prompt = tiny.format_prompt(MESSAGES)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_completion_logprobs_match_a_manual_forward_pass(tiny):
    prompt, completion = tiny.format_prompt(MESSAGES), "def add(a, b):\n    return a + b"
    prompt_ids = tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tiny.tokenizer(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = tiny.model(torch.tensor([prompt_ids + completion_ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    expected = [logprobs[len(prompt_ids) + i - 1, token].item() for i, token in enumerate(completion_ids)]

    got = tiny.completion_logprobs(prompt, completion)

    assert len(got) == len(completion_ids) > 5
    assert got == pytest.approx(expected, abs=1e-5)
    assert all(lp < 0 for lp in got)
    assert tiny.completion_logprobs(prompt, "") == []


def test_greedy_chat_is_deterministic_and_records_its_prompt(tiny):
    first, second = tiny.chat(MESSAGES, GREEDY), tiny.chat(MESSAGES, GREEDY)
    assert first.text and first.text == second.text
    assert first.prompt == tiny.format_prompt(MESSAGES)
    assert first.model == tiny.name and first.latency_s > 0


def test_sample_batches_n_candidates_per_conversation_and_seeds_reproduce(tiny):
    config = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=7)
    samples = tiny.sample([MESSAGES, OTHER_MESSAGES], n=4, config=config)

    assert [len(candidates) for candidates in samples] == [4, 4]
    assert len(set(samples[0])) > 1  # a random model at temperature 1 does not repeat itself 4 times
    assert tiny.sample([MESSAGES, OTHER_MESSAGES], n=4, config=config) == samples
    other_seed = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=8)
    assert tiny.sample([MESSAGES, OTHER_MESSAGES], n=4, config=other_seed) != samples


def test_shared_prompt_sampling_matches_plain_generate(tiny):
    # sample() runs each prompt through the model once and shares its KV cache among the n
    # candidates; with the same seed that must draw exactly what plain generate() draws.
    config = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=11)
    samples = tiny.sample([MESSAGES, OTHER_MESSAGES], n=3, config=config)

    batch = tiny.tokenizer([tiny.format_prompt(m) for m in (MESSAGES, OTHER_MESSAGES)], padding=True,
                           padding_side="left", add_special_tokens=False, return_tensors="pt")
    torch.manual_seed(11)
    output = tiny.model.generate(**batch, max_new_tokens=12, do_sample=True, top_k=0, num_return_sequences=3,
                                 pad_token_id=tiny.pad_token_id)
    texts = tiny.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert samples == [texts[:3], texts[3:]]


def test_greedy_sample_in_a_padded_batch_equals_chat(tiny):
    # The two prompts have different lengths, so the shorter one is left-padded in the batch.
    batched = tiny.sample([MESSAGES, OTHER_MESSAGES], n=2, config=GREEDY)
    assert batched[0] == [tiny.chat(MESSAGES, GREEDY).text] * 2
    assert batched[1] == [tiny.chat(OTHER_MESSAGES, GREEDY).text] * 2


def test_stream_deltas_join_to_the_unstreamed_reply(tiny):
    deltas = list(tiny.stream_chat(MESSAGES, GREEDY))
    assert len(deltas) >= 2
    assert "".join(deltas) == tiny.sample([MESSAGES], config=GREEDY)[0][0]


def test_stop_strings_cut_the_reply_in_stream_and_sample(tiny):
    full = tiny.chat(MESSAGES, GREEDY).text
    stop = full[len(full) // 2:len(full) // 2 + 2]  # a two-character string the reply contains
    config = GenerationConfig(max_new_tokens=24, stop=[stop])
    expected = full[:full.index(stop)]
    assert "".join(tiny.stream_chat(MESSAGES, config)) == expected
    assert tiny.sample([MESSAGES], config=config)[0][0] == expected


def test_cancel_stops_a_stream(tiny):
    config = GenerationConfig(max_new_tokens=400)
    cancel = threading.Event()
    deltas = []
    for delta in tiny.stream_chat(MESSAGES, config, cancel=cancel):
        deltas.append(delta)
        cancel.set()
    assert len(deltas) == 1
    # The generation behind the stream stopped too: the model is free for the next call at once.
    start = time.perf_counter()
    tiny.chat(MESSAGES, GenerationConfig(max_new_tokens=2))
    assert time.perf_counter() - start < 2.0

    assert list(tiny.stream_chat(MESSAGES, config, cancel=cancel)) == []  # already cancelled


def test_prompt_longer_than_the_context_is_truncated_from_the_left(tiny, caplog):
    long_messages = [{"role": "user", "content": "def add(a, b): return a + b\n" * 400}]
    assert len(tiny.encode(tiny.format_prompt(long_messages))) > tiny.context_length
    with caplog.at_level(logging.WARNING, logger="simulators.llm.local"):
        reply = tiny.chat(long_messages, GenerationConfig(max_new_tokens=8))
        logprobs = tiny.completion_logprobs(tiny.format_prompt(long_messages), "return a + b")
    assert reply.text
    assert len(logprobs) == len(tiny.encode("return a + b"))
    assert "exceeds the context" in caplog.text


def test_lora_adapter_changes_outputs_and_disabling_it_restores_the_base(tiny, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # init_lora_weights=False draws both LoRA matrices at random, so the adapter is not a no-op.
    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")

    tuned = LocalModel(tiny_model_dir, adapter=tmp_path / "adapter")
    prompt, completion = tuned.format_prompt(MESSAGES), "def add(a, b):"
    base_logprobs = tiny.completion_logprobs(prompt, completion)

    assert tuned.completion_logprobs(prompt, completion) != pytest.approx(base_logprobs, abs=1e-3)
    assert tuned.chat(MESSAGES, GREEDY).text != tiny.chat(MESSAGES, GREEDY).text
    with tuned.model.disable_adapter():
        assert tuned.completion_logprobs(prompt, completion) == pytest.approx(base_logprobs, abs=1e-5)
        assert tuned.chat(MESSAGES, GREEDY).text == tiny.chat(MESSAGES, GREEDY).text


def test_missing_adapter_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="no LoRA adapter"):
        LocalModel(tiny_model_dir, adapter=tmp_path / "nothing-here")


def test_load_model_resolves_specs_and_caches_local_models(tiny_model_dir, tmp_path, monkeypatch):
    model = load_model(f"local:{tiny_model_dir}")
    assert isinstance(model, LocalModel)
    assert load_model(str(tiny_model_dir)) is model
    monkeypatch.chdir(tiny_model_dir.parent)
    assert load_model(f"local:./{tiny_model_dir.name}") is model  # one model per directory
    (tmp_path / "script.json").write_text('["Hello!"]')
    assert load_model(f"scripted:{tmp_path / 'script.json'}").chat(OTHER_MESSAGES).text == "Hello!"
    with pytest.raises(ModelError, match="no model version .v3."):
        load_model("registry:v3")
    with pytest.raises(ModelError, match="unknown model spec"):
        load_model("no such model")
    with pytest.raises(ModelError, match="openai:BASE_URL#MODEL_NAME"):
        load_model("openai:http://127.0.0.1:1/v1")
