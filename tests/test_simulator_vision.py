"""``--simulator-vision`` reaches the simulated human in ``evaluate`` and in the loop's evaluation:
the simulator is sent both screenshots (the agent's page and the reference), as the paper's
Qwen2-VL simulator sees them; a simulator that cannot take images is refused up front.

The simulator here is a vision endpoint stand-in: an OpenAI-compatible HTTP server that records
each request and answers with a fixed reply (no vision model fits this machine).
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from simulators.tasks import load_sample_tasks, write_tasks
from training.evaluate import EvaluateConfig, run_evaluation
from training.iteration import IterationConfig, run_iteration

PAGE = "<html><body><h1 class=\"text-3xl\">Fresh bread daily</h1><p>Order now</p></body></html>"
REPLY = "Make the title larger and add the order button."


class RecordingEndpoint(http.server.BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def vision_endpoint():
    RecordingEndpoint.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"openai:http://127.0.0.1:{server.server_address[1]}/v1#qwen2-vl", RecordingEndpoint.requests
    server.shutdown()


@pytest.fixture
def frontend_task_file(tmp_path):
    path = tmp_path / "frontend.jsonl"
    write_tasks([t for t in load_sample_tasks() if t.kind == "frontend"][:1], path)
    return path


def images_sent(request: dict) -> list[str]:
    return [part["image_url"]["url"] for message in request["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part.get("type") == "image_url"]


def test_evaluate_sends_the_simulator_both_screenshots(vision_endpoint, frontend_task_file, tmp_path):
    simulator, requests = vision_endpoint
    agent = tmp_path / "agent.json"
    agent.write_text(json.dumps([f"Here is a first draft:\n{PAGE}"]))
    common = dict(model=f"scripted:{agent}", tasks=str(frontend_task_file), simulator=simulator, max_rounds=2,
                  batch_size=1)

    result = run_evaluation(EvaluateConfig(**common, simulator_vision=True, out=str(tmp_path / "vision.jsonl")),
                            progress=False)
    assert result["n"] == 1 and len(requests) == 1  # one human reply between the agent's two turns
    images = images_sent(requests[0])
    assert len(images) == 2 and all(url.startswith("data:image/png;base64,") for url in images)
    assert images[0] != images[1]  # the agent's draft, then the reference page

    requests.clear()
    run_evaluation(EvaluateConfig(**common, out=str(tmp_path / "text.jsonl")), progress=False)
    assert len(requests) == 1 and images_sent(requests[0]) == []  # off: the text route (page differences)
    assert all(isinstance(m["content"], str) for m in requests[0]["messages"])


def test_a_simulator_that_cannot_see_images_is_refused_before_any_work(tiny_model_dir, frontend_task_file, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("COLLAB_HOME", str(tmp_path / "home"))
    with pytest.raises(ValueError, match="cannot take: use a vision endpoint"):
        run_evaluation(EvaluateConfig(tasks=str(frontend_task_file), simulator=str(tiny_model_dir),
                                      simulator_vision=True, out=str(tmp_path / "eval.jsonl")), progress=False)
    assert not (tmp_path / "eval.jsonl").exists()
    with pytest.raises(ValueError, match="cannot take"):  # the loop says so before training, not after
        run_iteration(IterationConfig(data=str(tmp_path / "no-such-data.jsonl"), out=str(tmp_path / "loop"),
                            simulator=str(tiny_model_dir), simulator_vision=True))
    assert not (tmp_path / "loop").exists()


def test_the_loop_s_evaluation_gate_uses_the_vision_route(vision_endpoint, frontend_task_file, tiny_model_dir,
                                                          tmp_path, one_torch_thread):
    """Both sides of the loop's evaluation (the parent and the new actor) go through the vision route."""
    import torch

    from training.iteration import evaluate_against_parent
    from training.models import load_lora_model
    from training.options import TrainOptions

    simulator, requests = vision_endpoint
    lm, tokenizer = load_lora_model(str(tiny_model_dir), TrainOptions(lora_r=4), device=torch.device("cpu"))
    lm.save_pretrained(tmp_path / "adapter")  # a new actor: the tiny base plus an (untrained) adapter
    parent = tmp_path / "parent.json"
    parent.write_text(json.dumps([PAGE]))
    config = IterationConfig(kind="frontend", eval_tasks=str(frontend_task_file), eval_limit=1, eval_samples=1,
                        eval_max_rounds=2, eval_max_new_tokens=8, simulator=simulator, simulator_vision=True,
                        progress=False)
    evaluation = evaluate_against_parent(config, tmp_path, [], str(tiny_model_dir), f"scripted:{parent}",
                                         tmp_path / "adapter")
    assert evaluation["tasks"] == 1 and evaluation["new"]["n"] == evaluation["parent"]["n"] == 1
    assert len(requests) == 2  # one human reply per side
    # The parent sent a page: both screenshots. The tiny actor's 8 random tokens hold no page: the
    # reference alone, with a note that the designer sent none.
    assert sorted(len(images_sent(r)) for r in requests) == [1, 2]
