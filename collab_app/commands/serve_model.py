"""An OpenAI-compatible HTTP server over a ``ChatModel`` (typically a local one).

    python -m collab_app serve-model --model default --port 8000
    # then: --agent openai:http://127.0.0.1:8000/v1#smollm2-135m-instruct

Endpoints: ``POST /v1/chat/completions`` (streaming or not, ``n``), ``POST /v1/completions`` (plain
prompt completion, and prompt log-probs with ``echo`` + ``logprobs`` + ``max_tokens=0`` as vLLM
does; both need a local model), ``GET /v1/models``, ``GET /health``. One generation runs at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from simulators.llm import ChatModel, GenerationConfig, ModelError, load_model

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_MESSAGES = 512
MAX_NEW_TOKENS = 8192
MAX_N = 64
MAX_LOGPROBS = 5


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# --- request bodies (unknown fields are ignored, as OpenAI clients send extras) ------------------

class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def as_message(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class SamplingParams(BaseModel):
    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False

    def generation_config(self, max_tokens: int) -> GenerationConfig:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationConfig(max_new_tokens=max_tokens, temperature=self.temperature,
                                top_p=self.top_p, seed=self.seed, stop=stop)


class ChatRequest(SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)  # newer name of max_tokens


class CompletionRequest(SamplingParams):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=0, le=MAX_NEW_TOKENS)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_special_tokens: bool = True  # vLLM's extension: add the tokenizer's BOS etc. to the prompt


# --- the app -------------------------------------------------------------------------------------

def create_app(model: ChatModel, served_name: str) -> FastAPI:
    """The FastAPI app serving ``model`` as ``served_name``."""
    app = FastAPI(title="collab-rl model server")
    generation_lock = threading.Lock()  # one generation at a time on a local model

    def locked(fn: Callable, *args):
        with generation_lock:
            return fn(*args)

    def check_model_name(requested: str | None) -> None:
        if requested and requested != served_name:
            raise ApiError(404, f"model {requested!r} does not exist; this server serves {served_name!r}",
                           "not_found_error")

    def local_model():
        from simulators.llm.local import LocalModel

        if not isinstance(model, LocalModel):
            raise ApiError(400, "/v1/completions needs a local model (it works on raw prompts and tokens)")
        return model

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.kind)

    @app.exception_handler(ModelError)
    async def model_error(request: Request, error: ModelError) -> JSONResponse:
        return error_response(500, str(error), "server_error")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served_name}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list",
                "data": [{"id": served_name, "object": "model", "created": 0, "owned_by": "collab-rl"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = parse_body(ChatRequest, await read_body(request))
        check_model_name(body.model)
        messages = [m.as_message() for m in body.messages]
        config = body.generation_config(body.max_completion_tokens or body.max_tokens
                                        or GenerationConfig().max_new_tokens)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            if body.n != 1:
                raise ApiError(400, "streaming supports n=1 only")
            events = stream_chat_events(model, generation_lock, messages, config, served_name, reply_id, created)
            return StreamingResponse(events, media_type="text/event-stream")
        if body.n == 1:
            texts = [(await run_in_threadpool(locked, model.chat, messages, config)).text]
        else:
            texts = (await run_in_threadpool(locked, model.sample, [messages], body.n, config))[0]
        choices = [{"index": i, "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason(model, text, config.max_new_tokens)}
                   for i, text in enumerate(texts)]
        return {"id": reply_id, "object": "chat.completion", "created": created, "model": served_name,
                "choices": choices}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse_body(CompletionRequest, await read_body(request))
        check_model_name(body.model)
        if body.stream:
            raise ApiError(400, "streaming is not supported on /v1/completions; use /v1/chat/completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "send one prompt per request")
        prompt, local = prompts[0], local_model()
        reply = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                 "model": served_name}
        if body.logprobs is not None:
            if not (body.echo and body.max_tokens == 0):
                raise ApiError(400, "logprobs are supported for the prompt only: send echo=true and max_tokens=0")
            logprobs = await run_in_threadpool(locked, prompt_logprobs, local, prompt, body.add_special_tokens)
            return reply | {"choices": [{"index": 0, "text": prompt, "logprobs": logprobs,
                                         "finish_reason": "length"}]}
        config = body.generation_config(body.max_tokens)
        texts = [""] * body.n if body.max_tokens == 0 else (
            await run_in_threadpool(locked, local.generate_texts, [prompt], body.n, config))[0]
        choices = [{"index": i, "text": (prompt if body.echo else "") + text, "logprobs": None,
                    "finish_reason": finish_reason(local, text, body.max_tokens)}
                   for i, text in enumerate(texts)]
        return reply | {"choices": choices}

    return app


async def read_body(request: Request) -> bytes:
    """The request body, refusing (413) anything over ``MAX_BODY_BYTES`` without buffering it all."""
    too_big = ApiError(413, f"request body exceeds {MAX_BODY_BYTES} bytes", "request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_big
    return bytes(body)


def parse_body(schema: type[BaseModel], body: bytes):
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        raise ApiError(400, f"invalid request: {problems}") from None


def error_response(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def finish_reason(model: ChatModel, text: str, max_tokens: int) -> str:
    """OpenAI's finish reason: "length" when the reply used its whole token budget (countable on
    local models), else "stop"."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= max_tokens:
        return "length"
    return "stop"


def prompt_logprobs(model, text: str, add_special_tokens: bool) -> dict:
    """vLLM's echo log-probs of a prompt: its tokens, their char offsets and log-probs (the first is None)."""
    encoded = model.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]
    if len(ids) > model.context_length:
        raise ApiError(400, f"prompt of {len(ids)} tokens exceeds the model's context of {model.context_length}")
    scored = model.token_logprobs(ids, start=1) if len(ids) > 1 else []
    return {"tokens": [model.tokenizer.decode([i]) for i in ids], "token_logprobs": [None, *scored][:len(ids)],
            "top_logprobs": None, "text_offset": offsets}


async def stream_chat_events(model: ChatModel, lock: threading.Lock, messages, config: GenerationConfig,
                             served_name: str, reply_id: str, created: int) -> AsyncIterator[str]:
    """Server-sent chat.completion.chunk events. Generation runs in a worker thread; when the client
    disconnects, Starlette cancels this generator and ``finally`` cancels the generation."""
    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def produce() -> None:
        try:
            with lock:
                for delta in model.stream_chat(messages, config, cancel):
                    loop.call_soon_threadsafe(events.put_nowait, ("delta", delta))
        except Exception as error:  # reported to the client as an error event
            loop.call_soon_threadsafe(events.put_nowait, ("error", str(error)))
        finally:
            loop.call_soon_threadsafe(events.put_nowait, ("end", None))

    def chunk(delta: dict, finish: str | None = None) -> str:
        payload = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": served_name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(payload)}\n\n"

    threading.Thread(target=produce, name="serve-stream", daemon=True).start()
    text = ""
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await events.get()
            if kind == "delta":
                text += value
                yield chunk({"content": value})
            elif kind == "error":
                yield f"data: {json.dumps({'error': {'message': value, 'type': 'server_error'}})}\n\n"
            else:
                break
        yield chunk({}, finish_reason(model, text, config.max_new_tokens))
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collab_app serve-model",
        description="OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, "
                    "/health) over a model.")
    parser.add_argument("--model", default="default", help="model spec (default: %(default)s); see simulators.llm")
    parser.add_argument("--adapter", help="LoRA adapter directory to put on a local model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-name", help="the model name clients ask for (default: the model's own name)")
    args = parser.parse_args(argv)

    import uvicorn

    try:
        model = load_model(args.model, adapter=args.adapter)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    served_name = args.served_name or model.name
    print(f"serving {served_name!r} at http://{args.host}:{args.port}/v1 "
          f"(client spec: openai:http://{args.host}:{args.port}/v1#{served_name})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(model, served_name), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
