"""A transformers causal LM as a ``ChatModel``: base weights plus an optional LoRA adapter.

CPU by default (fp32); CUDA when available (bf16). ``model`` and ``tokenizer`` are public so
training can use them directly; the methods here are the inference side.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

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
            self.tokenizer = tokenizer or _load_tokenizer(str(model))
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
        """``n`` continuations of each raw prompt, all in ONE batched ``generate`` call (left padding;
        each prompt is encoded and run through the model once, its KV cache shared by its n candidates)."""
        config = config or GenerationConfig()
        if not prompts or n < 1:
            return [[] for _ in prompts]
        fitted = [self._fit_prompt(self.encode(p), config.max_new_tokens) for p in prompts]
        max_new_tokens = min(budget for _, budget in fitted)
        width = max(len(ids) for ids, _ in fitted)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, (ids, _) in enumerate(fitted):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        stop_kwargs = dict(stop_strings=config.stop, tokenizer=self.tokenizer) if config.stop else {}
        # Greedy candidates are all the same: decode each prompt once and repeat it.
        copies = n if config.temperature > 0 else 1
        with self._generate_lock, torch.inference_mode():
            self._seed(config)
            cache_kwargs = {}
            if copies > 1 and width > 1:
                # The n candidates share their prompt: run it through the model once per prompt
                # (all but its last token, which generate feeds itself) and repeat the KV cache.
                cache_kwargs["cache"] = self._prefill(input_ids[:, :-1], attention_mask[:, :-1])
                cache_kwargs["cache"].batch_repeat_interleave(copies)
                input_ids = input_ids.repeat_interleave(copies, dim=0)
                attention_mask = attention_mask.repeat_interleave(copies, dim=0)
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                **cache_kwargs, **stop_kwargs, **self._generate_kwargs(config))
        texts = self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        texts = [truncate_at_stop(t, config.stop) for t in texts]
        if copies == 1:
            return [[text] * n for text in texts]
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The KV cache of a left-padded batch (positions count from each row's first real token)."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, logits_to_keep=1)
        return output.cache

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


def _load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ModelError(_load_hint(source, error)) from error


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
