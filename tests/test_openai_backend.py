"""OpenAIChatModel against a real ``collab_app.commands.serve_model`` subprocess serving the tiny model."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from simulators.llm import GenerationConfig, ModelError, load_model
from simulators.llm.local import LocalModel
from simulators.llm.openai_client import OpenAIChatModel

REPO_ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
GREEDY = GenerationConfig(max_new_tokens=24)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """Base URL of a model server subprocess serving the tiny model as "tiny"."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "collab_app.commands.serve_model", "--model", f"local:{tiny_model_dir}",
         "--port", str(port), "--served-name", "tiny"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # importing torch on a busy 2-core machine can take a while
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"model server did not come up:\n{process.communicate()[0]}")
        time.sleep(0.25)
    yield f"{base_url}/v1"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def remote(server) -> OpenAIChatModel:
    model = load_model(f"openai:{server}#tiny")
    assert isinstance(model, OpenAIChatModel)
    return model


@pytest.fixture(scope="module")
def local(tiny_model_dir) -> LocalModel:
    return LocalModel(tiny_model_dir)


def test_models_and_health(server):
    assert httpx.get(f"{server}/models").json()["data"][0]["id"] == "tiny"
    assert httpx.get(server.removesuffix("/v1") + "/health").json()["status"] == "ok"


def test_stream_joins_to_the_non_streamed_greedy_reply(remote, local):
    deltas = list(remote.stream_chat(MESSAGES, GREEDY))
    assert len(deltas) >= 2
    reply = remote.sample([MESSAGES], n=1, config=GREEDY)[0][0]
    assert "".join(deltas) == reply == local.chat(MESSAGES, GREEDY).text


def test_n_sampling_over_http(remote):
    config = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=3)
    samples = remote.sample([MESSAGES, [{"role": "user", "content": "hi"}]], n=3, config=config)
    assert [len(candidates) for candidates in samples] == [3, 3]
    assert len(set(samples[0])) > 1
    assert remote.sample([MESSAGES, [{"role": "user", "content": "hi"}]], n=3, config=config) == samples


def test_completion_logprobs_over_http_match_local(remote, local):
    prompt, completion = local.format_prompt(MESSAGES), "def add(a, b):\n    return a + b"
    expected = local.completion_logprobs(prompt, completion)
    assert remote.completion_logprobs(prompt, completion) == pytest.approx(expected, abs=1e-4)


def test_plain_prompt_completion(server, local):
    prompt = local.format_prompt(MESSAGES)
    reply = httpx.post(f"{server}/completions",
                       json={"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0}).json()
    assert reply["choices"][0]["text"] == local.chat(MESSAGES, GREEDY).text


def test_dead_endpoint_fails_after_its_retries_naming_the_url():
    # A refused connection may be a server restarting: retried, max_attempts times in all.
    dead = OpenAIChatModel(f"http://127.0.0.1:{free_port()}/v1", "tiny", max_attempts=3, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(ModelError, match=r"http://127\.0\.0\.1:\d+/v1/chat/completions is unreachable"
                                         r".*\(gave up after 3 attempts\)"):
        dead.chat(MESSAGES, GREEDY)
    assert time.monotonic() - start < 5


def test_oversized_and_invalid_requests_get_clear_4xx(server, remote):
    huge = [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]
    response = httpx.post(f"{server}/chat/completions", json={"model": "tiny", "messages": huge})
    assert response.status_code == 413
    assert "exceeds" in response.json()["error"]["message"]

    response = httpx.post(f"{server}/chat/completions", json={"model": "tiny", "messages": [], "n": 0})
    assert response.status_code == 400
    assert "messages" in response.json()["error"]["message"]

    wrong_name = OpenAIChatModel(server, "not-served")
    with pytest.raises(ModelError, match="HTTP 404.*'tiny'"):
        wrong_name.chat(MESSAGES, GREEDY)


class LimitedEndpoint(http.server.BaseHTTPRequestHandler):
    """A chat-only endpoint that answers slowly: no /completions, chat replies after 3 s."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/completions") and "chat" not in self.path:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"detail": "Not Found"}')
            return
        time.sleep(3)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def limited_endpoint():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LimitedEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_endpoint_without_prompt_logprobs_says_so(limited_endpoint):
    with pytest.raises(ModelError, match="HTTP 404: Not Found.*prompt log-probs need echo"):
        OpenAIChatModel(limited_endpoint, "m").completion_logprobs("<|im_start|>user\nhi", "hello")


def test_slow_endpoint_times_out_with_a_clear_error(limited_endpoint):
    slow = OpenAIChatModel(limited_endpoint, "m", read_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(ModelError, match=f"{limited_endpoint}/chat/completions timed out"):
        slow.chat(MESSAGES, GREEDY)
    assert time.monotonic() - start < 2.5
