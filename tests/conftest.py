"""Shared fixtures. The whole session runs offline (``HF_HUB_OFFLINE=1``).

``tiny_model_dir`` is a random 2-layer Llama with a small byte-level BPE tokenizer trained here in
memory and a ChatML chat template, so model tests take seconds and need no downloads or set-up.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

# The tiny model's code lives in training.tiny_model (scripts/gpu_check.sh builds it too); its
# builders are re-exported here for the tests that import them from conftest.
from training.tiny_model import build_tiny_model, build_tiny_tokenizer, save_tiny_model  # noqa: E402, F401


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A directory holding a tiny random Llama chat model (HF format: weights, tokenizer, template)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, above all on a shared machine (no spin-waiting)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
