"""Multi-process training for real: two CPU processes (gloo) under ``accelerate launch`` train the
critic, the actor, RFT and multi-turn DPO on the tiny model (tests/accelerate_worker.py).

Checked: each process trains on its own half of the items; gradients are synchronised (both
processes end with equal weights); checkpoints and logs are written by one process; and the
result matches one process that accumulates both halves' gradients (gradient accumulation 2
against 2 processes × 1) on the same data, within float tolerance.

accelerate 1.x starts several CPU processes through torchrun with ``--multi_gpu`` and
``ACCELERATE_USE_CPU=1`` (``--cpu --num_processes 2`` alone starts one process unless under mpirun).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = REPO_ROOT / "tests" / "accelerate_worker.py"
TRAINERS = ("critic", "actor", "rft", "mtdpo")
ITEMS, EPOCHS = 4, 2  # what the worker trains on: 4 items (pair groups, prompts, sequences) per trainer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_worker(command: list[str], out: Path, accumulation: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="1")
    result = subprocess.run([*command, str(WORKER), env["TINY_MODEL_DIR"], str(out), str(accumulation)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """(two-process run directory, one-process run directory)."""
    os.environ["TINY_MODEL_DIR"] = str(tiny_model_dir)
    two, one = tmp_path_factory.mktemp("two-processes"), tmp_path_factory.mktemp("one-process")
    accelerate = Path(sys.executable).with_name("accelerate")
    run_worker([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())], two, 1)
    run_worker([sys.executable], one, 2)
    return two, one


def record(run: Path, rank: int) -> dict:
    return json.loads((run / f"record-{rank}.json").read_text())


def weights(run: Path, name: str, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(run / f"weights-{name}-{rank}.pt")


def log_lines(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name / "log.jsonl").read_text().splitlines()]


pytestmark = pytest.mark.slow  # two launches of torch + transformers: ~1 min on a busy 2-core machine


def test_two_processes_each_train_on_their_own_half(runs):
    two, _ = runs
    first, second = record(two, 0), record(two, 1)
    assert (first["rank"], second["rank"], first["world"]) == (0, 1, 2)
    for name in TRAINERS:
        assert first["item_count"][name] == ITEMS
        mine, theirs = first["items"][name], second["items"][name]
        per_epoch = ITEMS // 2
        assert len(mine) == len(theirs) == EPOCHS * per_epoch
        for epoch in range(EPOCHS):
            window = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
            assert sorted(mine[window] + theirs[window]) == list(range(ITEMS)), name  # disjoint halves, all items


def test_gradients_are_synchronised_the_processes_end_equal(runs):
    two, _ = runs
    for name in TRAINERS:
        mine, theirs = weights(two, name, 0), weights(two, name, 1)
        assert mine.keys() == theirs.keys() and mine
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name
        assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in mine.items() if "lora_B" in k), name  # trained


def test_checkpoints_and_logs_are_written_by_one_process(runs):
    two, _ = runs
    steps = EPOCHS * ITEMS // 2
    second = record(two, 1)
    # The second process writes no checkpoint: only its own copy of the reference log-probs cache
    # (a temporary file renamed into place), which any process may compute.
    assert all(Path(path).name.startswith(".reference_logprobs.pt.") for path in second["saves"])
    for name in TRAINERS:
        saves = [p for p in record(two, 0)["saves"] if f"/{name}/checkpoint" in p]
        assert len(saves) == 2 * (steps + 1)  # trainable + optimiser, each step (save_steps=1) and at the end
        assert [line["step"] for line in log_lines(two, name)] == list(range(1, steps + 1))
        assert sorted(p.name for p in (two / name).iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
        assert json.loads((two / name / "checkpoint" / "state.json").read_text())["step"] == steps
    for name in ("actor", "rft", "mtdpo"):
        assert (two / name / "adapter" / "adapter_config.json").is_file()


def test_two_processes_match_one_process_accumulating_the_same_batches(runs):
    two, one = runs
    for name in TRAINERS:
        distributed, single = weights(two, name), weights(one, name)
        assert distributed.keys() == single.keys()
        for key in distributed:
            torch.testing.assert_close(distributed[key], single[key], rtol=1e-3, atol=1e-4, msg=f"{name} {key}")
        losses = [line["loss"] for line in log_lines(two, name)]
        assert losses == pytest.approx([line["loss"] for line in log_lines(one, name)], rel=1e-3, abs=1e-5)
