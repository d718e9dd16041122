"""The reference log-prob cache, which belongs to one π_ref model."""

from __future__ import annotations

import pytest
import torch

from training.logprobs import ReferenceLogprobs, collate, masked_token_logprobs, reference_model_id
from training.models import load_lora_model
from training.options import TrainOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reference_log_probs_belong_to_the_model_that_computed_them(tiny_model_dir, tmp_path):
    """A run resumed in the same directory on another base must not reuse the first base's π_ref."""
    import shutil

    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    other_dir = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other_dir)
    build_tiny_model(build_tiny_tokenizer(), seed=1).save_pretrained(other_dir)  # other weights
    options = TrainOptions(lora_r=4, max_length=512, gradient_checkpointing=False)
    cpu = torch.device("cpu")
    lm_a, _ = load_lora_model(str(tiny_model_dir), options, device=cpu)
    lm_b, _ = load_lora_model(str(other_dir), options, device=cpu)
    id_a = reference_model_id(str(tiny_model_dir), lm_a, adapter_disabled=True)
    id_b = reference_model_id(str(other_dir), lm_b, adapter_disabled=True)
    assert id_a != id_b

    ids = list(range(5, 45))
    target = [i >= 20 for i in range(len(ids))]
    item = ("seq", ids, target)
    path = tmp_path / "run" / "reference_logprobs.pt"
    ReferenceLogprobs(path, model_id=id_a).fill(lm_a, [item], pad_id=0, disable_adapter=True, progress=False)
    assert "seq" in ReferenceLogprobs(path, model_id=id_a)  # the same model resumes from the file
    stale = ReferenceLogprobs(path, model_id=id_b)
    assert "seq" not in stale  # another model computes its own
    stale.fill(lm_b, [item], pad_id=0, disable_adapter=True, progress=False)
    with torch.no_grad():
        expected = {name: masked_token_logprobs(lm.eval(), *collate([ids], [target], 0, cpu))
                    for name, lm in (("a", lm_a), ("b", lm_b))}
    reloaded = ReferenceLogprobs(path, model_id=id_b)["seq"]
    assert reloaded.tolist() == pytest.approx(expected["b"].tolist(), abs=1e-5)
    assert not torch.allclose(expected["a"], expected["b"], atol=1e-3)
    assert torch.load(path)["model"] == id_b
    with pytest.raises(ValueError, match="model_id"):
        ReferenceLogprobs(path)
