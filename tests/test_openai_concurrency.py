"""Rollouts against a served model at scale: many requests in flight, transient failures retried,
permanent ones reported at once, finished episodes never lost.

Everything runs over real HTTP: ``collab_app.commands.serve_model`` serving the tiny model (the fixture of
``test_openai_backend``) and, in front of it, ``FlakyProxy``, a stdlib HTTP server that forwards
requests, fails those its plan says (503, 429, 400, a dropped connection) and counts how many
requests are in flight at once.
"""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
import test_openai_backend

from simulators.__main__ import main as simulators_main
from simulators.humans import SimulatedHuman
from simulators.llm import GenerationConfig, ModelError
from simulators.llm.openai_client import OpenAIChatModel
from simulators.llm.scripted import ScriptedModel
from simulators.rollout import RolloutConfig, run_rollouts
from simulators.tasks import read_task_file
from simulators.trajectories import load_episodes

server = test_openai_backend.server  # the tiny model served by `python -m collab_app serve-model`
MESSAGES = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
GREEDY = GenerationConfig(max_new_tokens=8)


class FlakyProxy:
    """An HTTP endpoint in front of ``upstream`` (``http://host:port``). ``plan(n, body)`` says what
    the n-th request (1-based, in arrival order) gets: "ok" (forwarded), "503", "429", "400", or
    "drop" (the connection closed with no answer). The first ``hold`` requests are held until
    ``hold`` of them are in flight together, so a client that sends them one by one cannot pass."""

    def __init__(self, upstream: str, plan: Callable[[int, bytes], str] = lambda n, body: "ok", hold: int = 1):
        self.plan, self.hold = plan, hold
        self.upstream = httpx.Client(base_url=upstream, timeout=120)
        self.lock = threading.Lock()
        self.arrived = self.in_flight = self.peak_in_flight = 0
        self.outcomes: Counter[str] = Counter()
        self.gate = threading.Barrier(hold, timeout=120)
        self.gate_broken = False
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive connections, as real servers

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                n = proxy.enter()
                try:
                    outcome = proxy.decide(n, body)
                    if outcome == "drop":
                        self.close_connection = True
                        return
                    if outcome == "ok":
                        reply = proxy.upstream.post(self.path, content=body,
                                                    headers={"Content-Type": "application/json"})
                        status, payload = reply.status_code, reply.content
                    else:
                        status, payload = int(outcome), b'{"error": {"message": "injected failure"}}'
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    proxy.leave()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def enter(self) -> int:
        with self.lock:
            self.arrived += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return self.arrived

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def decide(self, n: int, body: bytes) -> str:
        if n <= self.hold and self.hold > 1:
            try:
                self.gate.wait()
            except threading.BrokenBarrierError:
                self.gate_broken = True
        outcome = self.plan(n, body)
        with self.lock:
            self.outcomes[outcome] += 1
        return outcome

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.upstream.close()


@pytest.fixture
def make_proxy(server):
    proxies: list[FlakyProxy] = []

    def make(plan: Callable[[int, bytes], str] = lambda n, body: "ok", hold: int = 1) -> FlakyProxy:
        proxies.append(FlakyProxy(server.removesuffix("/v1"), plan, hold))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def every_fourth_fails_once() -> Callable[[int, bytes], str]:
    """Every 4th request fails, in turn with 503, a dropped connection and 429; a request body
    that failed once is forwarded from then on (so every conversation succeeds by its second try)."""
    failed: set[bytes] = set()
    kinds = ["503", "drop", "429"]

    def plan(n: int, body: bytes) -> str:
        if n % 4 or body in failed:
            return "ok"
        failed.add(body)
        return kinds[len(failed) % len(kinds)]

    return plan


def dialogues(path) -> dict[tuple[str, int], list[str]]:
    return {(e.task.id, e.meta["sample"]): [t.content for t in e.turns] + [e.answer]
            for e in load_episodes(path).items}


@pytest.mark.slow  # two rollouts of 12 episodes through a served model: ~45 s on a busy 2-core machine
def test_rollouts_keep_many_requests_in_flight_and_retry_failed_ones(server, make_proxy, tmp_path):
    common = ["rollout", "--tasks", "samples", "--kind", "backend", "--limit", "6", "--best-of-n", "2",
              "--max-rounds", "2", "--agent-temperature", "0", "--agent-max-new-tokens", "8",
              "--simulator-max-new-tokens", "8", "--no-score"]
    direct = tmp_path / "direct.jsonl"
    assert simulators_main([*common, "--agent", f"openai:{server}#tiny", "--out", str(direct)]) == 0

    # 12 requests must be in flight together before any is answered: --concurrency 12 raises the
    # batch (default 8) to all 12 episodes, whose requests go out at once.
    proxy = make_proxy(every_fourth_fails_once(), hold=12)
    flaky = tmp_path / "flaky.jsonl"
    assert simulators_main([*common, "--agent", f"openai:{proxy.url}#tiny", "--out", str(flaky),
                            "--concurrency", "12"]) == 0
    assert not proxy.gate_broken and proxy.peak_in_flight >= 12
    assert proxy.outcomes["503"] and proxy.outcomes["drop"] and proxy.outcomes["429"]
    # Retried requests change nothing: the same 12 greedy dialogues as without failures.
    assert len(dialogues(flaky)) == 12
    assert dialogues(flaky) == dialogues(direct)


def test_transient_errors_are_retried_a_bounded_number_of_times(server, make_proxy):
    always_busy = make_proxy(lambda n, body: "503")
    client = OpenAIChatModel(always_busy.url, "tiny", max_attempts=3, backoff_s=0.01)
    with pytest.raises(ModelError, match=r"HTTP 503: injected failure \(gave up after 3 attempts\)"):
        client.chat(MESSAGES, GREEDY)
    assert always_busy.arrived == 3

    once_each = make_proxy(lambda n, body: {1: "429", 2: "drop"}.get(n, "ok"))
    client = OpenAIChatModel(once_each.url, "tiny", backoff_s=0.01)
    streamed = "".join(client.stream_chat(MESSAGES, GREEDY))  # the stream is retried before its first text
    assert once_each.arrived == 3 and streamed
    assert OpenAIChatModel(server, "tiny").sample([MESSAGES], config=GREEDY)[0][0] == streamed


def test_permanent_errors_fail_at_once(make_proxy):
    refusing = make_proxy(lambda n, body: "400")
    with pytest.raises(ModelError, match=r"/v1/chat/completions answered HTTP 400: injected failure$"):
        OpenAIChatModel(refusing.url, "tiny", backoff_s=0.01).sample([MESSAGES, MESSAGES], config=GREEDY)
    assert refusing.arrived <= 2  # each conversation asked once, never retried


def test_an_endpoint_failing_mid_batch_keeps_the_episodes_that_had_finished(server, make_proxy, tmp_path):
    # The agent answers at once in every other episode (they end in round 1); the others wait for
    # the simulated human, whose endpoint is down past its retries.
    agent = ScriptedModel(["I WANT TO ANSWER: def late_fee(days_late, item_type): return 0.0",
                           "Which item types are there?"])
    down = make_proxy(lambda n, body: "503")
    human = SimulatedHuman(OpenAIChatModel(down.url, "tiny", max_attempts=2, backoff_s=0.01), max_new_tokens=8)
    tasks = read_task_file("samples", "backend", 4)
    out = tmp_path / "episodes.jsonl"
    config = RolloutConfig(out=str(out), max_rounds=3, batch_size=4, score=False)
    with pytest.raises(ModelError, match="HTTP 503"):
        run_rollouts(tasks, agent, human, config, progress=False)
    kept = load_episodes(out).items
    assert [e.task.id for e in kept] == [tasks[0].id, tasks[2].id]
    assert all(e.answer == "def late_fee(days_late, item_type): return 0.0" for e in kept)

    # The same command once the endpoint is back plays only the two that were cut short.
    human = SimulatedHuman(OpenAIChatModel(server, "tiny"), max_new_tokens=8)
    played = run_rollouts(tasks, agent, human, config, progress=False)
    assert sorted(e.task.id for e in played) == sorted([tasks[1].id, tasks[3].id])
    assert sorted(e.task.id for e in load_episodes(out).items) == sorted(t.id for t in tasks)


def test_evaluate_keeps_concurrency_requests_in_flight(server, make_proxy, tmp_path):
    from training.evaluate import EvaluateConfig, run_evaluation

    proxy = make_proxy(hold=6)  # 6 requests in flight together, or the proxy never answers the first ones
    spec = f"openai:{proxy.url}#tiny"
    config = EvaluateConfig(model=spec, simulator=spec, tasks="samples", kind="backend", limit=6, max_rounds=1,
                            agent_temperature=0.0, agent_max_new_tokens=8, batch_size=2, concurrency=6,
                            out=str(tmp_path / "eval.jsonl"))
    result = run_evaluation(config, progress=False)
    assert result["n"] == 6
    assert not proxy.gate_broken and proxy.peak_in_flight >= 6 and proxy.arrived == 6
