"""A ``ChatModel`` over any OpenAI-compatible HTTP endpoint (``vllm serve``, ``collab_app.commands.serve_model``).

Talks plain HTTP with httpx (no ``openai`` package). A batched ``sample`` keeps up to
``concurrency`` requests in flight (the server batches what it receives together). Transient
failures (connection errors, HTTP 429 and 5xx) are retried with exponential backoff and jitter,
``max_attempts`` times in all; other HTTP errors (400, 404, 413, ...) fail at once with a
``ModelError`` naming the URL.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from simulators.llm.base import ChatModel, GenerationConfig, Message, ModelError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 4.0
READ_TIMEOUT_S = 300.0  # a long generation on a busy server may take minutes
# Requests in flight per batched call. vLLM batches up to 256 sequences (--max-num-seqs); 32 keeps
# a single-GPU `vllm serve` busy without queueing minutes of work behind one client.
DEFAULT_CONCURRENCY = 32
MAX_ATTEMPTS = 5
BACKOFF_S = 0.5  # the wait before the first retry; doubled at each further one, up to BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
# Errors of the connection itself, worth another try (a restarting or overloaded server). A read
# timeout is not among them: the request already waited the full read timeout.
TRANSIENT_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
                              httpx.RemoteProtocolError, httpx.PoolTimeout)


class EndpointRefused(ModelError):
    """The endpoint answered, with an HTTP error status."""


class EndpointBusy(EndpointRefused):
    """HTTP 429 or 5xx: the endpoint may answer if asked again (after ``retry_after`` seconds, if it said)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIChatModel(ChatModel):
    """``base_url`` ends in ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``); ``model`` is the served name."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 read_timeout_s: float = READ_TIMEOUT_S, concurrency: int = DEFAULT_CONCURRENCY,
                 max_attempts: int = MAX_ATTEMPTS, backoff_s: float = BACKOFF_S):
        if concurrency < 1 or max_attempts < 1:
            raise ModelError("concurrency and max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No cap on connections here: ``sample`` bounds what is in flight by ``concurrency``.
        self.client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(read_timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    def close(self) -> None:
        self.client.close()

    def format_prompt(self, messages: list[Message]) -> str:
        """A ChatML rendering of the messages. Approximate: the server applies the model's own
        chat template, which this client cannot see."""
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"

    # --- HTTP ------------------------------------------------------------------------------------

    def _request_body(self, messages: list[Message], config: GenerationConfig, **extra: Any) -> dict:
        body = dict(model=self.model, messages=messages, max_tokens=config.max_new_tokens,
                    temperature=config.temperature, top_p=config.top_p, **extra)
        if config.seed is not None:
            body["seed"] = config.seed
        if config.stop:
            body["stop"] = config.stop
        return body

    def _post(self, path: str, body: dict) -> dict:
        url = f"{self.base_url}{path}"
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.client.post(url, json=body)
                _raise_for_status(url, response.status_code, response.text, response.headers)
                return response.json()
            except (EndpointBusy, *TRANSIENT_TRANSPORT_ERRORS) as error:
                self._wait_before_retry(url, error, attempt)
            except httpx.HTTPError as error:
                raise _unreachable(url, error) from error
        raise AssertionError("unreachable: the last attempt raises")

    def _wait_before_retry(self, url: str, error: Exception, attempt: int) -> None:
        """Sleep before attempt ``attempt + 1``; after the last attempt, raise ``error`` as a ModelError."""
        if attempt >= self.max_attempts:
            gave_up = f" (gave up after {attempt} attempts)" if attempt > 1 else ""
            if isinstance(error, ModelError):
                raise type(error)(f"{error}{gave_up}") from error
            raise ModelError(f"{_unreachable(url, error)}{gave_up}") from error
        delay = backoff_delay(attempt, self.backoff_s, getattr(error, "retry_after", None))
        logger.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", url, error, delay, attempt + 1,
                       self.max_attempts)
        time.sleep(delay)

    # --- ChatModel -------------------------------------------------------------------------------

    def stream_chat(
        self, messages: list[Message], config: GenerationConfig | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        config = config or GenerationConfig()
        url = f"{self.base_url}/chat/completions"
        body = self._request_body(messages, config, stream=True)
        for attempt in range(1, self.max_attempts + 1):
            streamed = False  # once text has gone out, a retry would repeat it: failures are final
            try:
                with self.client.stream("POST", url, json=body) as response:
                    if response.status_code >= 400:
                        _raise_for_status(url, response.status_code, response.read().decode(errors="replace"),
                                          response.headers)
                    # Server-sent events: "data: {json}" lines, ended by "data: [DONE]". Leaving the
                    # ``with`` early (cancel) closes the connection, which tells the server to stop.
                    for line in response.iter_lines():
                        if cancel is not None and cancel.is_set():
                            return
                        if not line.startswith("data:"):
                            continue
                        data = line.removeprefix("data:").strip()
                        if data == "[DONE]":
                            return
                        chunk = json.loads(data)
                        if "error" in chunk:
                            raise ModelError(f"{url}: {chunk['error'].get('message', chunk['error'])}")
                        delta = (chunk["choices"][0].get("delta") or {}).get("content")
                        if delta:
                            streamed = True
                            yield delta
                return
            except (EndpointBusy, *TRANSIENT_TRANSPORT_ERRORS) as error:
                if streamed:  # only a dropped connection can come after text (the status came first)
                    raise _unreachable(url, error) from error
                self._wait_before_retry(url, error, attempt)
            except httpx.HTTPError as error:
                raise _unreachable(url, error) from error

    def sample(
        self, conversations: list[list[Message]], n: int = 1, config: GenerationConfig | None = None
    ) -> list[list[str]]:
        config = config or GenerationConfig()
        # Greedy candidates are all the same (and some servers refuse n > 1 without sampling).
        copies = n if config.temperature > 0 else 1

        def sample_one(messages: list[Message]) -> list[str]:
            reply = self._post("/chat/completions", self._request_body(messages, config, n=copies))
            choices = sorted(reply["choices"], key=lambda choice: choice["index"])
            texts = [choice["message"]["content"] or "" for choice in choices]
            return texts if copies == n else texts * n

        if len(conversations) <= 1 or self.concurrency == 1:
            return [sample_one(c) for c in conversations]
        # One request per conversation, ``concurrency`` at a time: the server batches what it can.
        # When one fails for good, the requests not yet sent are dropped, not sent in vain.
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations)),
                                  thread_name_prefix="openai-sample")
        try:
            return list(pool.map(sample_one, conversations))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def completion_logprobs(self, prompt: str, completion: str) -> list[float]:
        """Per-token log-probs via ``/completions`` with ``echo``, ``logprobs`` and ``max_tokens=0``
        (vLLM and ``collab_app.commands.serve_model`` support it). The server tokenises prompt + completion
        as one text; tokens that cover any completion character are returned. For chat prompts
        (which end in a newline or a special token) that boundary is exact."""
        if not completion:
            return []
        body = dict(model=self.model, prompt=prompt + completion, echo=True, logprobs=1, max_tokens=0,
                    temperature=0.0, add_special_tokens=False)
        url = f"{self.base_url}/completions"
        try:
            logprobs = self._post("/completions", body)["choices"][0]["logprobs"]
            offsets, token_logprobs = logprobs["text_offset"], logprobs["token_logprobs"]
        except EndpointBusy:
            raise
        except EndpointRefused as error:
            raise ModelError(f"{error} (prompt log-probs need echo + logprobs + max_tokens=0 "
                             "on /completions, as vLLM and collab_app.commands.serve_model provide)") from error
        except (KeyError, IndexError, TypeError) as error:
            raise ModelError(f"{url} does not return prompt log-probs (echo + logprobs + max_tokens=0); "
                             "use a vLLM or collab_app.commands.serve_model endpoint") from error
        # A token covers completion text when it ends after the prompt does (next token's offset).
        ends = offsets[1:] + [len(prompt) + len(completion)]
        return [lp for end, lp in zip(ends, token_logprobs, strict=True) if end > len(prompt) and lp is not None]


def backoff_delay(attempt: int, base_s: float, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): base · 2^(attempt-1), capped at
    ``BACKOFF_MAX_S``, of which a random half (jitter: many clients that failed together do not
    all come back together); at least the server's ``Retry-After``, within the same cap."""
    ceiling = min(BACKOFF_MAX_S, base_s * 2 ** (attempt - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, BACKOFF_MAX_S))
    return delay


def use_concurrency(concurrency: int, *models: ChatModel) -> bool:
    """Let every endpoint model among ``models`` keep ``concurrency`` requests in flight; whether
    there was one (local models batch on their own device and ignore it)."""
    if concurrency < 1:
        raise ModelError(f"--concurrency must be at least 1, not {concurrency}")
    endpoints = [m for m in models if isinstance(m, OpenAIChatModel)]
    for model in endpoints:
        model.concurrency = concurrency
    return bool(endpoints)


def _unreachable(url: str, error: httpx.HTTPError) -> ModelError:
    if isinstance(error, httpx.TimeoutException):
        what = "timed out"
    elif isinstance(error, httpx.ConnectError):
        what = "is unreachable (connection failed)"
    else:
        what = "failed"
    return ModelError(f"model endpoint {url} {what}: {error}. Is the server running (e.g. `vllm serve` "
                      "or `python -m collab_app serve-model`) and the URL right?")


def _raise_for_status(url: str, status: int, text: str, headers: httpx.Headers | None = None) -> None:
    if status < 400:
        return
    try:  # OpenAI puts the message at error.message, vLLM at message, FastAPI at detail
        payload = json.loads(text)
        message = (payload.get("error") or {}).get("message") or payload.get("message") or payload["detail"]
    except (ValueError, KeyError, TypeError, AttributeError):
        message = text[:500]
    what = f"model endpoint {url} answered HTTP {status}: {message}"
    if status == 429 or status >= 500:
        raise EndpointBusy(what, _retry_after(headers))
    raise EndpointRefused(what)


def _retry_after(headers: httpx.Headers | None) -> float | None:
    """The ``Retry-After`` header in seconds (its HTTP-date form is rare from model servers: ignored)."""
    try:
        return float(headers["retry-after"]) if headers is not None and "retry-after" in headers else None
    except ValueError:
        return None
