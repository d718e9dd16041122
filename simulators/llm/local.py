"""A transformers causal LM as a ``ChatModel``: base weights plus an optional LoRA adapter.

CPU by default (fp32); CUDA when available (bf16). ``model`` and ``tokenizer`` are public so
training can use them directly; the methods here are the inference side.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopPLogitsWarper,
)
from transformers.cache_utils import Cache, CacheLayerMixin

from simulators.llm.base import ChatModel, GenerationConfig, Message, ModelError

logger = logging.getLogger(__name__)


class _StopWhenSet(StoppingCriteria):
    """Stops every sequence of a running ``generate`` once any of ``events`` is set (checked each step)."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def truncate_at_stop(text: str, stop: list[str]) -> str:
    """``text`` up to (not including) the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def idle_cpu_threads(sample_s: float = 0.25) -> int:
    """One torch thread per core not busy with other work right now, at least one.

    More threads than free cores make them spin-wait on each other at every operation: on two
    cores shared with other jobs, one decoding step of the default model took 4.4 s with two
    threads and 0.35 s with one (docs/BENCHMARKS.md, "Rollouts"). Busy cores are measured over
    ``sample_s`` from ``/proc/stat`` (the 1-minute load average still counts work that ended up to
    minutes ago); the load average where there is no ``/proc/stat``.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        before = _cpu_times()
        time.sleep(sample_s)
        after = _cpu_times()
        busy_share = 1 - (after[1] - before[1]) / max(after[0] - before[0], 1)
        busy = busy_share * (os.cpu_count() or cores)
    except OSError:
        busy = os.getloadavg()[0]
    return max(1, min(cores, math.floor(cores - busy + 0.5)))


def _cpu_times() -> tuple[int, int]:
    """(all, idle) clock ticks of the machine's CPUs since boot, from ``/proc/stat``."""
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    return sum(ticks[:8]), ticks[3] + ticks[4]  # user..steal; idle + iowait


PREFIX_CACHE_BYTES = 3 << 30  # keys/values kept by ``LocalModel.reuse_prefixes`` (SmolLM2-135M: 46 KB a token)


@dataclass
class PrefixEntry:
    ids: torch.Tensor  # the tokens whose keys/values are kept (a prompt and its reply)
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), [1, heads, len(ids), head_dim]
    prompt_length: int  # how many of ``ids`` were the prompt

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)


class PrefixCache:
    """Keys/values of recent prompt + reply sequences, least recently used dropped beyond a budget.

    A dialogue's next prompt is its last prompt, the reply, and a new turn: it starts with an
    entry (up to where re-tokenizing the reply text differs from the generated tokens), so only
    the rest is run through the model.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.entries: OrderedDict[int, PrefixEntry] = OrderedDict()  # by id(entry), oldest first
        self.nbytes = 0

    def take_longest_prefix(self, ids: list[int]) -> tuple[PrefixEntry | None, int]:
        """The entry sharing the longest prefix with ``ids``, and that prefix's length. An entry
        whose whole prompt is shared is superseded (the same dialogue a round on) and leaves the cache."""
        best, best_length = None, 0
        query = torch.tensor(ids)
        for entry in self.entries.values():
            n = min(len(entry.ids), len(query))
            differs = (entry.ids[:n] != query[:n]).nonzero()
            length = int(differs[0]) if len(differs) else n
            if length > best_length:
                best, best_length = entry, length
        if best is not None:
            if best_length >= best.prompt_length:
                self._remove(best)
            else:
                self.entries.move_to_end(id(best))
        return best, best_length

    def add(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]], prompt_length: int) -> None:
        entry = PrefixEntry(torch.tensor(ids), layers, prompt_length)
        if entry.nbytes > self.budget_bytes:
            return
        self.entries[id(entry)] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.budget_bytes:
            self._remove(next(iter(self.entries.values())))

    def _remove(self, entry: PrefixEntry) -> None:
        del self.entries[id(entry)]
        self.nbytes -= entry.nbytes


class _BufferLayer(CacheLayerMixin):
    """One layer's keys/values in preallocated storage ``[batch, heads, capacity, head_dim]``: new
    tokens are written in place (a ``DynamicLayer`` concatenates, copying the whole cache each token)."""

    is_sliding = False

    def __init__(self, storage_keys: torch.Tensor, storage_values: torch.Tensor, length: int):
        super().__init__()
        self.storage_keys, self.storage_values, self.length = storage_keys, storage_values, length
        self.device = storage_keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # allocated up front

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.storage_keys[:, :, self.length:end] = key_states
        self.storage_values[:, :, self.length:end] = value_states
        self.length = end
        return self.storage_keys[:, :, :end], self.storage_values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.storage_keys.shape[-2]


class _BufferCache(Cache):
    """A batch's keys/values, rows left-padded to a common length, written in place as it decodes."""

    def __init__(self, layers: list[_BufferLayer]):
        super().__init__(layers=layers)

    @classmethod
    def allocate(cls, like: list[tuple[torch.Tensor, torch.Tensor]], rows: int, capacity: int,
                 length: int) -> _BufferCache:
        """Storage for ``rows`` sequences of up to ``capacity`` tokens, shaped after the layers in ``like``."""
        layers = []
        for keys, values in like:
            shape = (rows, keys.shape[1], capacity, keys.shape[3])
            layers.append(_BufferLayer(keys.new_empty(shape), values.new_empty(shape[:3] + values.shape[3:]), length))
        return cls(layers)

    @property
    def length(self) -> int:
        return self.layers[0].length

    def write_row(self, row: int, layers: list[tuple[torch.Tensor, torch.Tensor]], start: int) -> None:
        """Put one sequence's keys/values in ``row`` at columns ``start:``; the padding before is zeroed
        (masked out, but uninitialised memory could hold NaNs, and 0 * NaN is NaN)."""
        for layer, (keys, values) in zip(self.layers, layers):
            for storage, states in ((layer.storage_keys, keys), (layer.storage_values, values)):
                storage[row, :, :start] = 0
                storage[row, :, start:start + states.shape[-2]] = states[0]

    def row(self, row: int, start: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of one row's keys/values from column ``start`` (its first real token) on."""
        return [(layer.storage_keys[row:row + 1, :, start:layer.length].clone(),
                 layer.storage_values[row:row + 1, :, start:layer.length].clone()) for layer in self.layers]

    def select_rows(self, rows: torch.Tensor, trim: int) -> None:
        """Keep only ``rows``, and drop the first ``trim`` columns (padding in all of them)."""
        for layer in self.layers:
            layer.storage_keys = layer.storage_keys[rows][:, :, trim:]
            layer.storage_values = layer.storage_values[rows][:, :, trim:]
            layer.length -= trim


class LocalModel(ChatModel):
    """A local causal LM with a chat template.

    ``model`` is a local HF directory or hub id (loaded here), or an already-loaded model, in which
    case ``tokenizer`` must be given too (training wraps the policy it is training this way).
    ``adapter`` is a peft LoRA adapter directory applied on top of the base weights. The model is
    put in eval mode (LoRA dropout off); a trainer that wraps its policy switches back with ``train()``.
    """

    def __init__(
        self,
        model: str | Path | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        adapter: str | Path | None = None,
        device: str | torch.device | None = None,
        name: str | None = None,
    ):
        if isinstance(model, (str, Path)):
            self.device = torch.device(device) if device is not None else default_device()
            self.name = name or str(model)
            self.tokenizer = tokenizer or load_tokenizer(str(model))
            self.model = _load_model(str(model), self.device)
        else:
            if tokenizer is None:
                raise ModelError("LocalModel(model_object) needs its tokenizer too")
            self.device = torch.device(device) if device is not None else model.device
            self.name = name or getattr(model.config, "name_or_path", "") or "local-model"
            self.model, self.tokenizer = model.to(self.device), tokenizer
        if adapter is not None:
            self.model = _apply_adapter(self.model, str(adapter))
            self.name = name or f"{self.name}+{adapter}"
        self.model.eval()
        if self.tokenizer.chat_template is None:
            raise ModelError(f"the tokenizer of {self.name!r} has no chat template; use an instruct/chat model")
        # Batched generation pads; a tokenizer without a pad token reuses end-of-sequence.
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        self.context_length = _context_length(self.model, self.tokenizer)
        # One generate at a time: seeding is process-global (torch.manual_seed), so concurrent
        # seeded calls would not reproduce, and parallel generates only fight over the cores.
        self._generate_lock = threading.Lock()
        self._prefix_lock = threading.Lock()
        self._prefixes: PrefixCache | None = None  # open while a ``reuse_prefixes`` block is
        self._prefix_users = 0

    # --- prompts and tokens ----------------------------------------------------------------------

    def format_prompt(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as is. Special tokens come from the text itself (the chat template
        writes them), so none are added here; this keeps prompt/completion boundaries exact."""
        # verbose=False: over-long texts are expected here; ``_fit_prompt`` truncates and says so.
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def _fit_prompt(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], int]:
        """Left-truncate the prompt so prompt + generation fits the context; returns (ids, max_new_tokens).

        A huge ``max_new_tokens`` never squeezes the prompt below half the context.
        """
        reserve = max(1, min(max_new_tokens, self.context_length // 2))
        keep = self.context_length - reserve
        if len(prompt_ids) > keep:
            logger.warning(
                "%s: prompt of %d tokens exceeds the context (%d tokens with %d reserved for the reply); "
                "dropping its first %d tokens", self.name, len(prompt_ids), self.context_length, reserve,
                len(prompt_ids) - keep)
            prompt_ids = prompt_ids[-keep:]
        return prompt_ids, max(1, min(max_new_tokens, self.context_length - len(prompt_ids)))

    def _generate_kwargs(self, config: GenerationConfig) -> dict:
        # OpenAI semantics: only temperature and top_p shape sampling (transformers adds top_k=50).
        if config.temperature > 0:
            sampling = dict(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0)
        else:
            sampling = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        return dict(pad_token_id=self.pad_token_id, **sampling)

    def _seed(self, config: GenerationConfig) -> None:
        if config.seed is not None and config.temperature > 0:
            torch.manual_seed(config.seed)  # seeds CUDA as well

    # --- generation ------------------------------------------------------------------------------

    def stream_chat(
        self, messages: list[Message], config: GenerationConfig | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        return self.stream_text(self.format_prompt(messages), config, cancel)

    def stream_text(
        self, prompt: str, config: GenerationConfig | None = None, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """Stream a continuation of a raw (already formatted) prompt as text deltas."""
        config = config or GenerationConfig()
        cancel = cancel or threading.Event()
        if cancel.is_set():
            return
        prompt_ids, max_new_tokens = self._fit_prompt(self.encode(prompt), config.max_new_tokens)
        finished = threading.Event()  # a stop string was seen, or the consumer walked away
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                with self._generate_lock, torch.inference_mode():
                    self._seed(config)
                    input_ids = torch.tensor([prompt_ids], device=self.device)
                    self.model.generate(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                        max_new_tokens=max_new_tokens, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopWhenSet(cancel, finished)]),
                        **self._generate_kwargs(config))
            except BaseException as error:  # re-raised in the consumer's thread below
                failure.append(error)
                streamer.on_finalized_text("", stream_end=True)

        worker = threading.Thread(target=generate, name=f"generate:{self.name}", daemon=True)
        worker.start()
        # Text that could still be the start of a stop string is held back until disambiguated.
        hold = max((len(s) for s in config.stop), default=1) - 1
        text, emitted = "", 0
        try:
            for delta in streamer:
                if cancel.is_set():
                    return
                text += delta
                if config.stop and (cut := truncate_at_stop(text, config.stop)) != text:
                    if len(cut) > emitted:
                        yield cut[emitted:]
                    return
                if len(text) - hold > emitted:
                    yield text[emitted:len(text) - hold]
                    emitted = len(text) - hold
            if failure:
                raise ModelError(f"{self.name}: generation failed: {failure[0]}") from failure[0]
            if len(text) > emitted:
                yield text[emitted:]
        finally:
            finished.set()
            worker.join()

    def sample(
        self, conversations: list[list[Message]], n: int = 1, config: GenerationConfig | None = None
    ) -> list[list[str]]:
        return self.generate_texts([self.format_prompt(c) for c in conversations], n, config)

    def generate_texts(
        self, prompts: list[str], n: int = 1, config: GenerationConfig | None = None
    ) -> list[list[str]]:
        """``n`` continuations of each raw prompt, decoded together as one batch.

        Each prompt is run through the model once (its KV cache shared by its n candidates), or
        only from where it leaves a cached prefix inside ``reuse_prefixes``. A sequence leaves the
        batch as soon as it ends (end-of-sequence token, stop string or ``config.stop_when``), so
        the others no longer carry it. Greedy output, and sampled output for a seed, are those of ``model.generate``
        on the left-padded batch (``tests/test_llm_local.py`` checks both).
        """
        config = config or GenerationConfig()
        if not prompts or n < 1:
            return [[] for _ in prompts]
        fitted = [self._fit_prompt(self.encode(p), config.max_new_tokens) for p in prompts]
        max_new_tokens = min(budget for _, budget in fitted)
        # Greedy candidates are all the same: decode each prompt once and repeat it.
        copies = n if config.temperature > 0 else 1
        with self._generate_lock, torch.inference_mode():
            self._seed(config)
            generated = self._decode([ids for ids, _ in fitted], copies, max_new_tokens, config)
        texts = [truncate_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), config.stop)
                 for ids in generated]
        if copies == 1:
            return [[text] * n for text in texts]
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    @contextmanager
    def reuse_prefixes(self, budget_bytes: int = PREFIX_CACHE_BYTES) -> Iterator[None]:
        """Keep each prompt's and completion's keys/values while the block is open, so that a later
        prompt extending one of them (the same dialogue a round on) is encoded only from where it
        differs. ``budget_bytes`` bounds the memory held (least recently used entries go first).
        Nested blocks share the outermost one's cache; it is dropped when that one closes.

        Only for fixed weights: a block must not span a training step or an adapter switch.
        """
        with self._prefix_lock:
            if self._prefixes is None:
                self._prefixes = PrefixCache(budget_bytes)
            self._prefix_users += 1
        try:
            yield
        finally:
            with self._prefix_lock:
                self._prefix_users -= 1
                if self._prefix_users == 0:
                    self._prefixes = None

    def _decode(self, prompts: list[list[int]], copies: int, max_new_tokens: int,
                config: GenerationConfig) -> list[list[int]]:
        """The generated token ids of ``copies`` sequences per prompt (end-of-sequence token kept).

        One decoding loop over the whole batch, with its keys/values in one preallocated
        left-padded buffer (a ``DynamicCache`` reallocates and copies the whole cache at every
        token). Rows that have ended are dropped from the buffer. For sampling the random draw
        always covers every row of the batch, as ``generate`` does, so a seed draws the same
        tokens whichever rows have ended.
        """
        prefixes = self._prefixes
        width = max(len(ids) for ids in prompts)
        rows = len(prompts) * copies
        cache, last_logits = None, []
        for index, ids in enumerate(prompts):
            layers, logits = self._prefill_one(ids, prefixes)
            last_logits.append(logits)
            if cache is None:
                cache = _BufferCache.allocate(layers, rows, width + max_new_tokens, length=width)
            for copy in range(copies):
                cache.write_row(index * copies + copy, layers, start=width - len(ids))
            del layers
        # Row r holds prompt r // copies, right-aligned at column ``width``.
        prompt_of_row = [prompts[r // copies] for r in range(rows)]
        padding = torch.tensor([width - len(ids) for ids in prompt_of_row], device=self.device)
        columns = torch.arange(width + max_new_tokens, device=self.device)
        attention_mask = (columns[None, :] >= padding[:, None]).long()
        positions = torch.tensor([len(ids) for ids in prompt_of_row], device=self.device)
        logits = torch.cat(last_logits).repeat_interleave(copies, dim=0).float()
        warpers = self._warpers(config)
        stop_ids = self._stop_token_ids()
        check_text = bool(config.stop) or config.stop_when is not None
        generated: list[list[int]] = [[] for _ in range(rows)]
        active = list(range(rows))  # batch row i is sequence active[i]
        for step in range(max_new_tokens):
            if config.temperature > 0:
                # The draw covers all ``rows`` (ended rows get a dummy distribution), as in generate().
                probs = torch.zeros((rows, logits.shape[-1]), device=self.device)
                probs[:, self.pad_token_id] = 1.0
                probs[active] = torch.softmax(warpers(None, logits), dim=-1)
                tokens = torch.multinomial(probs, num_samples=1)[active, 0]
            else:
                tokens = torch.argmax(logits, dim=-1)
            keep = []
            for i, (sequence, token) in enumerate(zip(active, tokens.tolist())):
                generated[sequence].append(token)
                if not (token in stop_ids or (check_text and self._text_ends(generated[sequence], config))):
                    keep.append(i)
            if step + 1 == max_new_tokens:
                keep = []
            if prefixes is not None:
                # An ended row's keys/values cover its prompt and its reply but the last token.
                for i in sorted(set(range(len(active))) - set(keep)):
                    sequence = active[i]
                    prefixes.add(prompt_of_row[sequence] + generated[sequence][:-1],
                                 cache.row(i, start=int(padding[i])), prompt_length=len(prompt_of_row[sequence]))
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                trim = int(padding[index].min())  # columns now padding in every row
                cache.select_rows(index, trim)
                attention_mask, padding = attention_mask[index, trim:], padding[index] - trim
                positions, tokens = positions[index], tokens[index]
                active = [active[i] for i in keep]
            output = self.model(input_ids=tokens[:, None], position_ids=positions[:, None], cache=cache,
                                attention_mask=attention_mask[:, :cache.length + 1], use_cache=True)
            logits = output.logits[:, -1].float()
            positions = positions + 1
        return generated

    def _prefill_one(self, ids: list[int], prefixes: PrefixCache | None):
        """(keys/values of ``ids`` per layer, logits after its last token), from the longest cached prefix."""
        entry, reused = prefixes.take_longest_prefix(ids) if prefixes is not None else (None, 0)
        reused = min(reused, len(ids) - 1)  # the last token is always fed: its logits start the reply
        cache = DynamicCache()
        if reused:
            for layer, (keys, values) in enumerate(entry.layers):
                cache.update(keys[:, :, :reused], values[:, :, :reused], layer)
        input_ids = torch.tensor([ids[reused:]], device=self.device)
        position_ids = torch.arange(reused, len(ids), device=self.device)[None]
        output = self.model(input_ids=input_ids, position_ids=position_ids, cache=cache, use_cache=True,
                            logits_to_keep=1)
        layers = [(layer.keys, layer.values) for layer in output.cache.layers]
        return layers, output.logits[:, -1]

    def _warpers(self, config: GenerationConfig) -> LogitsProcessorList:
        # OpenAI semantics: only temperature and top_p shape sampling (generate() would add top_k=50).
        warpers = LogitsProcessorList()
        if config.temperature > 0 and config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.temperature > 0 and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(config.top_p))
        return warpers

    def _stop_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, (list, tuple)) else {eos}

    def _text_ends(self, ids: list[int], config: GenerationConfig) -> bool:
        """Whether the text of ``ids`` holds a stop string or satisfies ``config.stop_when``."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s and s in text for s in config.stop) or (config.stop_when is not None and config.stop_when(text))

    # --- scoring ---------------------------------------------------------------------------------

    def completion_logprobs(self, prompt: str, completion: str) -> list[float]:
        prompt_ids, completion_ids = self.encode(prompt), self.encode(completion)
        return self.token_logprobs(prompt_ids + completion_ids, start=len(prompt_ids))

    def token_logprobs(self, input_ids: list[int], start: int) -> list[float]:
        """Log-prob of each token ``input_ids[start:]`` given the tokens before it, in one forward pass.

        When the sequence exceeds the context, context tokens are dropped from the left; if the
        scored tokens alone do not fit, only the first ``context_length - 1`` are scored.
        """
        if start >= len(input_ids):
            return []
        if start < 1:
            raise ModelError("token_logprobs needs at least one conditioning token before the scored ones")
        if len(input_ids) > self.context_length:
            scored = min(len(input_ids) - start, self.context_length - 1)
            logger.warning(
                "%s: %d tokens exceed the context of %d; scoring the first %d of %d tokens with the last "
                "%d context tokens", self.name, len(input_ids), self.context_length, scored,
                len(input_ids) - start, self.context_length - scored)
            context = input_ids[:start][-(self.context_length - scored):]
            input_ids, start = context + input_ids[start:start + scored], len(context)
        ids = torch.tensor([input_ids], device=self.device)
        with self._generate_lock, torch.inference_mode():
            # Only the positions that predict scored tokens need logits (a long prompt's full
            # logits would take gigabytes at a 49k vocabulary).
            logits = self.model(input_ids=ids, logits_to_keep=len(input_ids) - start + 1).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, start:, None])[:, 0]
        return logprobs.tolist()


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory or hub id, for inference and training alike; one
    without a pad token pads with its end-of-sequence token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ModelError(_load_hint(source, error)) from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(source: str, device: torch.device) -> PreTrainedModel:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device)
    except (OSError, ValueError) as error:
        raise ModelError(_load_hint(source, error)) from error


def _apply_adapter(model: PreTrainedModel, adapter: str) -> PreTrainedModel:
    from peft import PeftModel  # imported here: peft is only needed for adapters

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelError(f"no LoRA adapter at {adapter!r} (expected adapter_config.json there)")
    return PeftModel.from_pretrained(model, adapter)


def _load_hint(source: str, error: Exception) -> str:
    if Path(source).exists():
        return f"could not load the model directory {source!r}: {error}"
    return (f"could not load model {source!r} as a hub id; that needs network access or a copy in the "
            f"Hugging Face cache (local directories work offline): {error}")


def _context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    # Tokenizers without a limit report a huge sentinel (1e30); ignore it.
    return min((int(x) for x in limits if x and x < 10_000_000), default=2048)
