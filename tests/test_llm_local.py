"""LocalModel on the tiny random Llama: log-probs, determinism, batching, streaming, cancel, LoRA."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch

from simulators.llm import GenerationConfig, ModelError, load_model
from simulators.llm.local import LocalModel, PrefixCache, idle_cpu_threads, truncate_at_stop

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


def generate_on_the_padded_batch(model: LocalModel, prompts: list[str], config: GenerationConfig, n: int = 1):
    """What ``sample`` returned before issue 12: one ``model.generate`` over the left-padded batch."""
    batch = model.tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
    if config.temperature > 0:
        sampling = dict(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0,
                        num_return_sequences=n)
    else:
        sampling = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    stops = dict(stop_strings=config.stop, tokenizer=model.tokenizer) if config.stop else {}
    if config.seed is not None:
        torch.manual_seed(config.seed)
    output = model.model.generate(**batch, max_new_tokens=config.max_new_tokens, pad_token_id=model.pad_token_id,
                                  **sampling, **stops)
    texts = model.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    texts = [truncate_at_stop(text, config.stop) for text in texts]
    copies = n if config.temperature > 0 else 1
    return [texts[i * copies:(i + 1) * copies] * (n // copies) for i in range(len(prompts))]


def decode_batch_sizes(model: LocalModel) -> tuple[list[int], object]:
    """The batch size of every one-token forward pass of ``model`` (a forward hook); remove the handle after."""
    sizes: list[int] = []

    def record(module, args, kwargs):
        input_ids = kwargs.get("input_ids")
        if input_ids is not None and input_ids.shape[1] == 1:
            sizes.append(input_ids.shape[0])

    return sizes, model.model.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("ending", ["end-of-sequence token", "stop string"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_leave_the_batch_when_they_end_and_outputs_stay_those_of_generate(tiny_model_dir, ending, temperature):
    model = LocalModel(tiny_model_dir)  # its own copy: the end-of-sequence tokens are changed below
    prompts = [model.format_prompt(m) for m in (MESSAGES, OTHER_MESSAGES, [{"role": "user", "content": "def add"}])]
    config = GenerationConfig(max_new_tokens=40, temperature=temperature, seed=3)
    if ending == "stop string":
        config.stop = ["at", "ell"]
    else:  # frequent tokens of the random model end its sequences, each at its own step
        model.model.generation_config.eos_token_id = [model.tokenizer.eos_token_id] + model.encode("at ell")
    expected = generate_on_the_padded_batch(model, prompts, config, n=2)

    sizes, hook = decode_batch_sizes(model)
    try:
        got = model.generate_texts(prompts, n=2, config=config)
    finally:
        hook.remove()

    assert got == expected
    rows = 6 if temperature > 0 else 3
    assert sizes[0] == rows and min(sizes) < rows  # some rows ended early and left the batch
    assert len({len(text) for candidates in got for text in candidates}) > 1


def test_greedy_sample_in_a_padded_batch_equals_chat(tiny):
    # The two prompts have different lengths, so the shorter one is left-padded in the batch.
    batched = tiny.sample([MESSAGES, OTHER_MESSAGES], n=2, config=GREEDY)
    assert batched[0] == [tiny.chat(MESSAGES, GREEDY).text] * 2
    assert batched[1] == [tiny.chat(OTHER_MESSAGES, GREEDY).text] * 2


@pytest.mark.parametrize("config", [GREEDY, GenerationConfig(max_new_tokens=24, temperature=1.0, seed=5)],
                         ids=["greedy", "sampled"])
def test_reused_prefixes_give_the_tokens_of_a_fresh_encoding(tiny_model_dir, config):
    """Three rounds of two growing dialogues: with ``reuse_prefixes`` each prompt is encoded only
    from where it leaves the last one's keys/values, and every reply is the same as without."""
    model = LocalModel(tiny_model_dir)
    fed: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"].numel()), with_kwargs=True)

    def three_rounds(reuse: bool) -> tuple[list, int]:
        dialogues, replies, start = [list(MESSAGES), list(OTHER_MESSAGES)], [], len(fed)
        with model.reuse_prefixes() if reuse else nullcontext():
            for round_index in range(3):
                outputs = model.sample(dialogues, config=replace(config, seed=(config.seed or 0) + round_index))
                replies.append(outputs)
                for dialogue, (reply,) in zip(dialogues, outputs):
                    dialogue += [{"role": "assistant", "content": reply},
                                 {"role": "user", "content": "The list may be empty; return 0 then."}]
        return replies, sum(fed[start:])

    try:
        fresh, fresh_tokens = three_rounds(reuse=False)
        reused, reused_tokens = three_rounds(reuse=True)
    finally:
        hook.remove()

    assert reused == fresh
    assert reused_tokens < 0.8 * fresh_tokens  # the later prompts' shared prefixes were not run again
    assert model._prefixes is None  # the keys/values are dropped when the block closes


def test_prefix_cache_takes_the_longest_match_and_keeps_to_its_budget():
    def layers(length: int):  # one layer, 16 bytes of keys and values a token
        return [(torch.zeros(1, 1, length, 2), torch.zeros(1, 1, length, 2))]

    cache = PrefixCache(budget_bytes=16 * 10)
    cache.add([1, 2, 3, 4], layers(4), prompt_length=2)
    cache.add([1, 2, 9], layers(3), prompt_length=2)
    entry, length = cache.take_longest_prefix([1, 2, 3, 4, 5])
    assert entry.ids.tolist() == [1, 2, 3, 4] and length == 4
    assert [e.ids.tolist() for e in cache.entries.values()] == [[1, 2, 9]]  # superseded: its prompt was all reused
    entry, length = cache.take_longest_prefix([1, 7])
    assert entry.ids.tolist() == [1, 2, 9] and length == 1 and len(cache.entries) == 1  # another dialogue: kept
    assert cache.take_longest_prefix([5, 6]) == (None, 0)
    cache.add([5] * 8, layers(8), prompt_length=1)  # 11 tokens > 10: the least recently used goes
    assert [e.ids.tolist() for e in cache.entries.values()] == [[5] * 8] and cache.nbytes == 16 * 8


def test_idle_cpu_threads_is_between_one_and_the_cores_of_this_process():
    assert 1 <= idle_cpu_threads() <= len(os.sched_getaffinity(0))


def test_idle_cpu_threads_counts_cores_busy_right_now_as_taken():
    """With a process spinning on every core, no core is idle: one thread (more would spin-wait)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)  # let them start spinning
        assert idle_cpu_threads(sample_s=0.5) == 1
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


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
