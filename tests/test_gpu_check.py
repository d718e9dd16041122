"""scripts/gpu_check.sh runs here, on CPU: the CUDA-only parts are skipped and say so."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_passes_on_cpu_and_names_what_it_skipped(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: this test checks the CPU route")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    result = subprocess.run([str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--keep", str(tmp_path / "work")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])  # one JSON line, last on stdout
    assert report["ok"] and report["cuda"] is False and report["device"] == "cpu"
    assert any(reason.startswith("bf16 autocast: no CUDA device") for reason in report["skipped"])
    assert "gpu_check: skipped bf16 autocast" in result.stderr
    assert "bf16_autocast" not in report and "peak_memory_mib" not in report
    assert report["critic"]["steps"] == 1 and report["critic"]["tokens_per_s"] > 0
    assert report["actor"]["steps"] == 1 and report["actor"]["candidates_per_turn"] == 4
    assert report["actor"]["sampled_turns"] == 8 and report["actor"]["pairs"] > 0
    engine = report["logprob_engine"]
    assert engine["tokens_per_s"] > 0 and engine["shared_prefix_max_abs_diff"] < 1e-3
    assert (tmp_path / "work" / "critic" / "critic.json").is_file()
    assert (tmp_path / "work" / "actor" / "adapter" / "adapter_config.json").is_file()
