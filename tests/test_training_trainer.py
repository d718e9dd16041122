"""The shared training loop's learning-rate schedule (warmup, then cosine decay, resumable)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from training.options import TrainOptions
from training.trainer import learning_rate_at, make_accelerator, optimise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupted(Exception):
    pass


def linear_run(tmp_path, options: TrainOptions, micro_batches: int, stop_at: int | None = None):
    """Train w (4 weights) on the linear loss Σ w over ``micro_batches`` items (dying at the
    ``stop_at``-th micro-batch); return each optimiser step's |Δw| (the gradient is constant, so
    AdamW moves every weight by exactly the step's learning rate: m̂ = g, v̂ = g²) and the log's
    lr per step."""
    model = torch.nn.Linear(4, 1, bias=False)
    seen: list[torch.Tensor] = []

    def loss_fn(module, item):
        if stop_at is not None and len(seen) == stop_at:
            raise Interrupted
        seen.append(module.weight.detach().clone())
        return module.weight.sum(), {}, 1

    try:
        optimise(model, list(range(micro_batches)), loss_fn, options, tmp_path, accelerator=make_accelerator(),
                 name="linear", plot_keys=("loss",))
    except Interrupted:
        pass
    steps = [(after - before).abs() for before, after in zip(seen, seen[1:])]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    return steps, {row["step"]: row["lr"] for row in log}


def test_the_learning_rate_warms_up_then_decays_along_a_cosine(tmp_path):
    options = TrainOptions(out=str(tmp_path), learning_rate=0.01, epochs=2, gradient_accumulation_steps=1,
                           warmup_ratio=0.1, min_lr_ratio=0.1, save_steps=0, eval_steps=0, progress=False)
    steps, lr = linear_run(tmp_path, options, micro_batches=10)  # 20 optimiser steps, W = 2 of warmup
    expected = [0.01 * 1 / 3, 0.01 * 2 / 3] + [
        0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 18))) for s in range(2, 20)]
    assert [lr[s + 1] for s in range(20)] == pytest.approx(expected)
    assert [learning_rate_at(s, 20, options) for s in range(20)] == pytest.approx(expected)
    # The optimiser really took those steps (the last one is not observed: no forward after it).
    assert [float(d.mean()) for d in steps] == pytest.approx(expected[:19], rel=1e-4)
    assert all(torch.allclose(d, d.mean().expand_as(d), rtol=1e-4) for d in steps)
    assert expected[0] < expected[1] < expected[2] == pytest.approx(0.01)  # warmup reaches the peak
    assert all(a > b for a, b in zip(expected[2:], expected[3:])) and expected[-1] > 0.001  # decays towards 0.1 x

    constant = TrainOptions(learning_rate=0.01, warmup_ratio=0.1, lr_scheduler="constant")
    assert [learning_rate_at(s, 20, constant) for s in (0, 1, 2, 19)] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01])
    with pytest.raises(ValueError, match="unknown lr_scheduler"):
        learning_rate_at(0, 20, TrainOptions(lr_scheduler="step"))


def test_a_resumed_run_continues_the_schedule_from_its_checkpoint(tmp_path):
    options = TrainOptions(out=str(tmp_path), learning_rate=0.01, epochs=1, gradient_accumulation_steps=1,
                           warmup_ratio=0.1, save_steps=5, eval_steps=0, progress=False)
    _, first = linear_run(tmp_path, options, micro_batches=12, stop_at=8)  # dies in step 9; checkpoint at 5
    assert sorted(first) == list(range(1, 9))
    steps, resumed = linear_run(tmp_path, options, micro_batches=12)
    assert sorted(resumed) == list(range(1, 13))  # the log is cut back to the checkpoint, then continued
    expected = [learning_rate_at(s, 12, options) for s in range(12)]
    assert [resumed[s + 1] for s in range(12)] == pytest.approx(expected)
    assert [float(d.mean()) for d in steps] == pytest.approx(expected[5:11], rel=1e-3)  # steps 6.. really at them
