"""A ``ChatModel`` over any OpenAI-compatible HTTP endpoint (``vllm serve``, ``collab_app.serve_model``).

Talks plain HTTP with httpx (no ``openai`` package). A dead endpoint fails fast with a
``ModelError`` naming the URL; there are no retries.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from simulators.llm.base import ChatModel, GenerationConfig, Message, ModelError

CONNECT_TIMEOUT_S = 4.0
READ_TIMEOUT_S = 300.0  # a long generation on a busy server may take minutes


class EndpointRefused(ModelError):
    """The endpoint answered, with an HTTP error status."""


class OpenAIChatModel(ChatModel):
    """``base_url`` ends in ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``); ``model`` is the served name."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 read_timeout_s: float = READ_TIMEOUT_S):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(read_timeout_s, connect=CONNECT_TIMEOUT_S))

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
        try:
            response = self.client.post(url, json=body)
        except httpx.HTTPError as error:
            raise _unreachable(url, error) from error
        _raise_for_status(url, response.status_code, response.text)
        return response.json()

    # --- ChatModel -------------------------------------------------------------------------------

    def stream_chat(
        self, messages: list[Message], config: GenerationConfig | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        config = config or GenerationConfig()
        url = f"{self.base_url}/chat/completions"
        body = self._request_body(messages, config, stream=True)
        try:
            with self.client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    _raise_for_status(url, response.status_code, response.read().decode(errors="replace"))
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
                        yield delta
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

        if len(conversations) <= 1:
            return [sample_one(c) for c in conversations]
        # One request per conversation, concurrently: the server batches what it can.
        with ThreadPoolExecutor(max_workers=min(8, len(conversations))) as pool:
            return list(pool.map(sample_one, conversations))

    def completion_logprobs(self, prompt: str, completion: str) -> list[float]:
        """Per-token log-probs via ``/completions`` with ``echo``, ``logprobs`` and ``max_tokens=0``
        (vLLM and ``collab_app.serve_model`` support it). The server tokenises prompt + completion
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
        except EndpointRefused as error:
            raise ModelError(f"{error} (prompt log-probs need echo + logprobs + max_tokens=0 "
                             "on /completions, as vLLM and collab_app.serve_model provide)") from error
        except (KeyError, IndexError, TypeError) as error:
            raise ModelError(f"{url} does not return prompt log-probs (echo + logprobs + max_tokens=0); "
                             "use a vLLM or collab_app.serve_model endpoint") from error
        # A token covers completion text when it ends after the prompt does (next token's offset).
        ends = offsets[1:] + [len(prompt) + len(completion)]
        return [lp for end, lp in zip(ends, token_logprobs, strict=True) if end > len(prompt) and lp is not None]


def _unreachable(url: str, error: httpx.HTTPError) -> ModelError:
    if isinstance(error, httpx.TimeoutException):
        what = "timed out"
    elif isinstance(error, httpx.ConnectError):
        what = "is unreachable (connection failed)"
    else:
        what = "failed"
    return ModelError(f"model endpoint {url} {what}: {error}. Is the server running (e.g. `vllm serve` "
                      "or `python -m collab_app serve-model`) and the URL right?")


def _raise_for_status(url: str, status: int, text: str) -> None:
    if status < 400:
        return
    try:  # OpenAI puts the message at error.message, vLLM at message, FastAPI at detail
        payload = json.loads(text)
        message = (payload.get("error") or {}).get("message") or payload.get("message") or payload["detail"]
    except (ValueError, KeyError, TypeError, AttributeError):
        message = text[:500]
    raise EndpointRefused(f"model endpoint {url} answered HTTP {status}: {message}")
